import types

import warmcache


def test_public_names_are_exported() -> None:
    exported = set(warmcache.__all__)
    assert {"WarmCache", "Mode", "NoCapacity", "WarmCacheError"} <= exported
    for name in exported:
        assert hasattr(warmcache, name), name
    # Every public non-module name at the top level is intended (listed).
    public = {
        name
        for name in dir(warmcache)
        if not name.startswith("_") and not isinstance(getattr(warmcache, name), types.ModuleType)
    }
    assert public <= exported


def test_every_error_has_a_stable_code() -> None:
    codes: set[str] = set()

    def walk(cls: type[warmcache.WarmCacheError]) -> None:
        for sub in cls.__subclasses__():
            codes.add(sub.code)
            walk(sub)

    walk(warmcache.WarmCacheError)
    assert "no_capacity" in codes and "invalid_request" in codes and "" not in codes
