"""Swap a pool instance's checkout and return methods for timed ones, and back.

The faces that predate the engine time checkouts this way while an observer is set (metrics
on), so that with no observer they run exactly their own code: no test, no call. A method
the user had patched on the instance is wrapped, and put back when timing stops; the timed
methods hold the pool weakly, so an abandoned pool is freed as it would be without them.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

__all__ = ["plain_method", "time_methods"]

_SAVED = "_pgpool_untimed_methods"  # instance attribute: name -> (timed, what it shadowed)


def plain_method(instance: Any, name: str) -> Callable[..., Any]:
    """What ``instance.name(...)`` runs without timing, holding ``instance`` weakly."""
    own = instance.__dict__.get(name)
    if own is not None:
        return own  # type: ignore[no-any-return]  # the user's patch
    function = getattr(type(instance), name)
    ref = weakref.ref(instance)

    def call(*args: Any, **kwargs: Any) -> Any:
        return function(ref(), *args, **kwargs)

    return call


def time_methods(instance: Any, timed: Optional[Mapping[str, Callable[..., Any]]]) -> None:
    """Put the ``timed`` methods on ``instance`` (``None``: put back what they replaced)."""
    saved: Dict[str, Tuple[Any, Any]] = instance.__dict__.pop(_SAVED, {})
    for name, (ours, shadowed) in saved.items():
        if instance.__dict__.get(name) is ours:  # not replaced by the user meanwhile
            if shadowed is None:
                del instance.__dict__[name]
            else:
                instance.__dict__[name] = shadowed
    if not timed:
        return
    instance.__dict__[_SAVED] = {
        name: (method, instance.__dict__.get(name)) for name, method in timed.items()
    }
    instance.__dict__.update(timed)
