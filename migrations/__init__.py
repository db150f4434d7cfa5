"""Versioned schema migrations, one module per version: ``vNNNN_<slug>.py`` with ``NAME`` and
``upgrade(m)``. Shipped inside the wheel as ``nameplate.migrations`` and applied by ``nameplate.backends.migrate``.
Never edit a released migration; add the next one."""
