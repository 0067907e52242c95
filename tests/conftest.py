"""Suite-wide setup."""

import warnings

# When a Hypothesis test fails, its pytest plugin imports hypothesis.extra._patching (libcst,
# mypy_extensions) to suggest a patch; that import emits a DeprecationWarning which the
# project's filterwarnings=error turns into an INTERNALERROR hiding the real failure.
# Import it once here, warnings silenced, so failures are reported normally.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # pragma: no cover - optional dependency chain
        pass
