"""Pytree registration for the frozen dataclasses of `sslntk.data` (augmentations, `Views`) that
never re-runs `__init__`: JAX rebuilds nodes with tracer / None / object leaves, which the
constructors' validation would reject. Named fields are leaves (`data`) or static aux data (`static`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax


def pytree_class(data: Sequence[str], static: Sequence[str] = ()):
    data, static = tuple(data), tuple(static)

    def register(cls):
        def flatten_with_keys(obj):
            return ([(jax.tree_util.GetAttrKey(f), getattr(obj, f)) for f in data],
                    tuple(getattr(obj, f) for f in static))

        def flatten(obj):
            return [getattr(obj, f) for f in data], tuple(getattr(obj, f) for f in static)

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for f, v in zip(data, children, strict=True):
                object.__setattr__(obj, f, v)
            for f, v in zip(static, aux, strict=True):
                object.__setattr__(obj, f, v)
            return obj

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        return cls

    return register
