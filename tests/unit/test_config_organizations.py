"""The ``organizations`` key: validation (no AWS call at parse time) and ``accounts`` becoming optional."""

from __future__ import annotations

from typing import Any

import pytest

from include.cmdb_inventory.config import ConfigError, OrganizationsSettings, parse_settings

BUCKET = "cmdb-inventory-bucket"
OU_A = "ou-ab12-abcdefgh"
OU_B = "ou-ab12-12345678"
ROOT = "r-ab12"


def config_error(raw: Any, params: dict[str, Any] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, params)
    return info.value


def test_organizations_alone_is_enough() -> None:
    settings = parse_settings({"bucket": BUCKET, "organizations": {}})
    assert settings.accounts == ()
    assert settings.organizations == OrganizationsSettings()
    assert settings.accounts_from_params is False


def test_every_organizations_key_is_read() -> None:
    settings = parse_settings(
        {
            "bucket": BUCKET,
            "accounts": [],
            "organizations": {
                "role_arn": "arn:aws:iam::111111111111:role/org/CMDBOrganizationsRead",
                "include_ous": [ROOT, OU_A],
                "exclude_ous": [OU_B],
                "exclude_accounts": ["222222222222"],
            },
        }
    )
    assert settings.organizations == OrganizationsSettings(
        role_arn="arn:aws:iam::111111111111:role/org/CMDBOrganizationsRead",
        include_ous=(ROOT, OU_A),
        exclude_ous=(OU_B,),
        exclude_accounts=("222222222222",),
    )


def test_static_accounts_and_organizations_combine() -> None:
    settings = parse_settings(
        {"bucket": BUCKET, "accounts": [{"id": "111111111111", "name": "Payer"}], "organizations": {}}
    )
    assert [a.id for a in settings.accounts] == ["111111111111"]
    assert settings.organizations is not None


def test_neither_accounts_nor_organizations_names_both_keys() -> None:
    err = config_error({"bucket": BUCKET})
    assert err.key == "accounts"
    assert "required" in str(err)
    assert "organizations" in str(err)


def test_organizations_null_is_like_absent() -> None:
    err = config_error({"bucket": BUCKET, "organizations": None})
    assert err.key == "accounts"


def test_params_accounts_are_an_override() -> None:
    settings = parse_settings({"bucket": BUCKET, "organizations": {}}, {"accounts": ["333333333333"]})
    assert [a.id for a in settings.accounts] == ["333333333333"]
    assert settings.accounts_from_params is True


@pytest.mark.parametrize(
    ("organizations", "key", "fragment"),
    [
        pytest.param([OU_A], "organizations", "must be an object", id="not-an-object"),
        pytest.param({"include_ou": [OU_A]}, "organizations.include_ou", "unknown key", id="typo"),
        pytest.param({"role_arn": "CMDBRead"}, "organizations.role_arn", '"CMDBRead"', id="role-name"),
        pytest.param(
            {"role_arn": "arn:aws:iam::11111111111:role/x"},
            "organizations.role_arn",
            "IAM role ARN",
            id="short",
        ),
        pytest.param(
            {"role_arn": "arn:aws:sts::111111111111:assumed-role/x/y"},
            "organizations.role_arn",
            "IAM role ARN",
            id="sts-arn",
        ),
        pytest.param({"include_ous": OU_A}, "organizations.include_ous", "must be a list", id="ous-string"),
        pytest.param(
            {"include_ous": [OU_A, "ou-XY"]}, "organizations.include_ous[1]", '"ou-XY"', id="bad-ou"
        ),
        pytest.param({"include_ous": [OU_A, OU_A]}, "organizations.include_ous[1]", "duplicate", id="dup-ou"),
        pytest.param({"exclude_ous": [ROOT]}, "organizations.exclude_ous[0]", ROOT, id="root-excluded"),
        pytest.param(
            {"include_ous": [OU_A], "exclude_ous": [OU_B, OU_A]},
            "organizations.exclude_ous[1]",
            "also in include_ous",
            id="both",
        ),
        pytest.param(
            {"exclude_accounts": [123456789012]}, "organizations.exclude_accounts[0]", "12-digit", id="int"
        ),
        pytest.param(
            {"exclude_accounts": ["12345678901x"]},
            "organizations.exclude_accounts[0]",
            "12345678901x",
            id="bad-id",
        ),
    ],
)
def test_invalid_organizations_name_the_key(organizations: Any, key: str, fragment: str) -> None:
    err = config_error({"bucket": BUCKET, "organizations": organizations})
    assert err.key == key, str(err)
    assert f"cmdb_ec2_inventory.{key}:" in str(err)
    assert fragment in str(err)


def test_an_excluded_account_cannot_also_be_listed() -> None:
    err = config_error(
        {
            "bucket": BUCKET,
            "accounts": ["111111111111", "222222222222"],
            "organizations": {"exclude_accounts": ["222222222222"]},
        }
    )
    assert err.key == "organizations.exclude_accounts[0]"
    assert "also listed in accounts" in str(err)


def test_static_accounts_are_still_validated_with_organizations() -> None:
    err = config_error({"bucket": BUCKET, "accounts": ["1234"], "organizations": {}})
    assert err.key == "accounts[0]"


def test_parsing_asks_aws_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Organizations is only called by resolve_accounts: parsing the settings creates no AWS client."""
    import botocore.session

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an AWS client was created while parsing the settings")

    monkeypatch.setattr(botocore.session.Session, "create_client", refuse)
    settings = parse_settings({"bucket": BUCKET, "organizations": {"include_ous": [OU_A]}})
    assert settings.organizations is not None
    assert settings.organizations.include_ous == (OU_A,)
