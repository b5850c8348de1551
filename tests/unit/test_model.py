from __future__ import annotations

import pytest
from pydantic import ValidationError

from warmcache.errors import InvalidRule
from warmcache.model import BuildRule, Flavor, HostFacts
from warmcache.rules import parse_rule, read_rules_file

RULE = {"max_instance_per_cycle": 5, "total_instances": 10}


def test_rule_defaults_are_safe() -> None:
    rule = BuildRule.model_validate(RULE)
    assert (rule.min_fault_domain, rule.reserve_cap, rule.enabled, rule.group_hint) == (
        1,
        0,
        True,
        None,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {**RULE, "reserve_cap": 11},
        {**RULE, "max_instance_per_cycle": 0},
        {**RULE, "total_instances": -1},
        {**RULE, "user_data": "not base64!"},
        {**RULE, "min_fault_domain": 0},
        {**RULE, "group_hint": "../etc"},
        {**RULE, "surprise": 1},
        {"total_instances": 3},
    ],
)
def test_bad_rules_are_rejected_with_field_errors(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidRule) as err:
        parse_rule(bad)
    assert err.value.code == "invalid_rule"
    assert err.value.errors and all("loc" in e and "msg" in e for e in err.value.errors)


def test_rule_errors_do_not_echo_user_data_back() -> None:
    with pytest.raises(InvalidRule) as err:
        parse_rule({**RULE, "user_data": "c2VjcmV0!!", "reserve_cap": "x"})
    assert "c2VjcmV0" not in str(err.value.detail())


def test_flavor_names_cannot_escape_a_key_prefix() -> None:
    with pytest.raises(ValidationError):
        Flavor(name="a/b", vcpus=1, memory_mib=512, disk_gib=1)


def test_host_fits_and_minus_account_every_resource() -> None:
    flavor = Flavor(name="f", vcpus=4, memory_mib=4096, disk_gib=10, extra_disks_gib=(5,))
    host = HostFacts(
        hypervisor="h",
        rack="r",
        az="a",
        vcpus_total=8,
        vcpus_free=8,
        memory_mib_total=8192,
        memory_mib_free=8192,
        disk_gib_total=30,
        disk_gib_free=30,
    )
    after = host.minus(flavor, "vm1", "g")
    assert (after.vcpus_free, after.memory_mib_free, after.disk_gib_free) == (4, 4096, 15)
    assert after.groups == ("g",) and after.vms == ("vm1",)
    assert after.fits(flavor) and not after.minus(flavor, "vm2", None).fits(flavor)


def test_rules_file_tables() -> None:
    rules = read_rules_file("[rules.az1.small]\ntotal_instances = 2\nmax_instance_per_cycle = 1\n")
    assert rules == {("az1", "small"): {"total_instances": 2, "max_instance_per_cycle": 1}}
    with pytest.raises(InvalidRule):
        read_rules_file("[rules")
