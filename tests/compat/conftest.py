"""Fixtures of the compat differential tests: run a scenario suite on the original library and
on our face, in this interpreter when the original imports here, else in .venv-seeds."""
