"""scikit-learn's estimator parameter protocol without importing scikit-learn.

The classifier is loaded by the router process, which must not pay for (or depend on)
scikit-learn. ``sklearn.base.clone``, ``get_params`` and grid search only need
``get_params``/``set_params`` over the ``__init__`` keyword arguments, so that is all this
mixin provides; ``__sklearn_tags__`` imports scikit-learn only when scikit-learn asks.
"""

from __future__ import annotations

import inspect
from typing import Any

from hybrid_common.errors import ConfigError


class ParamsMixin:
    """``get_params``/``set_params``/``__repr__`` derived from the ``__init__`` signature."""

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(
            name
            for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as scikit-learn's ``BaseEstimator.get_params``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> ParamsMixin:
        """Set constructor arguments; unknown names raise :class:`ConfigError`."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ConfigError(f"{type(self).__name__} has no parameter {name!r}; valid: {sorted(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items() if name != "self"
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k, inspect.Parameter.empty) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        """Declare a string-input classifier; only scikit-learn calls this, so importing it here is free."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags(),
            input_tags=InputTags(one_d_array=True, two_d_array=False, string=True),
        )
