"""Key policy evaluation: effects, principals, actions, condition operators."""

from __future__ import annotations

import json
from typing import Any

import pytest

from emulator.kms.errors import AccessDeniedException, MalformedPolicyDocumentException
from emulator.kms.policy import RequestContext, authorize, default_policy, parse_policy

KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CALLER = "arn:aws:iam::111122223333:user/AKIDEXAMPLE"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(**fields: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*", **fields}


def ctx(action: str = "kms:Decrypt", caller: str = CALLER, account: str = "111122223333", **values: Any) -> RequestContext:
    return RequestContext(action, caller, account, KEY, {k.lower(): v for k, v in values.items()})


def outcome(text: str, context: RequestContext) -> str:
    return parse_policy(text).evaluate(context)


def test_default_policy_allows_the_account_only() -> None:
    text = default_policy("111122223333")
    assert outcome(text, ctx()) == "Allow"
    assert outcome(text, ctx(caller="arn:aws:iam::444455556666:user/x", account="444455556666")) == "NoMatch"


def test_explicit_deny_wins() -> None:
    text = policy(allow(), {**allow(), "Effect": "Deny", "Action": "kms:Decrypt"})
    assert outcome(text, ctx()) == "Deny"
    assert outcome(text, ctx(action="kms:Encrypt")) == "Allow"
    with pytest.raises(AccessDeniedException, match="with an explicit deny in a resource-based policy"):
        authorize(parse_policy(text), ctx())


def test_no_allow_message_is_aws_shaped() -> None:
    with pytest.raises(AccessDeniedException) as raised:
        authorize(parse_policy(policy(allow(Action="kms:Encrypt"))), ctx())
    assert raised.value.message == (
        f"User: {CALLER} is not authorized to perform: kms:Decrypt on resource: {KEY} "
        "because no resource-based policy allows the kms:Decrypt action"
    )


@pytest.mark.parametrize(
    ("actions", "action", "expected"),
    [("kms:*", "kms:Decrypt", "Allow"), ("kms:Gen*", "kms:GenerateDataKey", "Allow"),
     ("kms:Gen*", "kms:Decrypt", "NoMatch"), (["kms:Encrypt", "kms:decrypt"], "kms:Decrypt", "Allow"),
     ("*", "kms:Sign", "Allow")],
)
def test_action_wildcards(actions: Any, action: str, expected: str) -> None:
    assert outcome(policy(allow(Action=actions)), ctx(action=action)) == expected


@pytest.mark.parametrize(
    ("principal", "expected"),
    [("*", "Allow"), ({"AWS": "*"}, "Allow"), ({"AWS": "111122223333"}, "Allow"),
     ({"AWS": CALLER}, "Allow"), ({"AWS": "arn:aws:iam::111122223333:user/other"}, "NoMatch"),
     ({"AWS": ["arn:aws:iam::999999999999:root"]}, "NoMatch"), ({"Service": "ec2.amazonaws.com"}, "NoMatch")],
)
def test_principals(principal: Any, expected: str) -> None:
    assert outcome(policy(allow(Principal=principal)), ctx()) == expected


def test_resource_must_match() -> None:
    assert outcome(policy(allow(Resource=KEY)), ctx()) == "Allow"
    assert outcome(policy(allow(Resource="arn:aws:kms:us-east-1:111122223333:key/other")), ctx()) == "NoMatch"


PCR0 = "ab" * 48


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [
        ({"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0.upper()}},
         {"kms:RecipientAttestation:ImageSha384": [PCR0]}, "Allow"),
        ({"StringEquals": {"kms:RecipientAttestation:PCR0": PCR0.upper()}},
         {"kms:RecipientAttestation:PCR0": [PCR0]}, "NoMatch"),  # case-sensitive
        ({"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0}}, {}, "NoMatch"),  # no Recipient
        ({"StringEquals": {"kms:recipientattestation:pcr0": [PCR0, "00"]}},
         {"kms:RecipientAttestation:PCR0": [PCR0]}, "Allow"),  # key names are case-insensitive
        ({"StringNotEquals": {"kms:CallerAccount": "111122223333"}}, {"kms:CallerAccount": ["111122223333"]}, "NoMatch"),
        ({"StringNotEquals": {"kms:RecipientAttestation:PCR0": PCR0}}, {}, "Allow"),  # negated, absent key
        ({"StringLike": {"kms:EncryptionContext:tenant": "team-*"}}, {"kms:EncryptionContext:tenant": ["team-a"]}, "Allow"),
        ({"StringLike": {"kms:EncryptionContext:tenant": "team-?"}}, {"kms:EncryptionContext:tenant": ["team-ab"]}, "NoMatch"),
        ({"Null": {"kms:RecipientAttestation:PCR0": "true"}}, {}, "Allow"),
        ({"Null": {"kms:RecipientAttestation:PCR0": "false"}}, {}, "NoMatch"),
        ({"Bool": {"aws:SecureTransport": True}}, {"aws:SecureTransport": ["true"]}, "Allow"),
        ({"StringEqualsIfExists": {"kms:EncryptionContext:x": "y"}}, {}, "Allow"),
        ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["a", "z"]}},
         {"kms:EncryptionContextKeys": ["a", "b"]}, "Allow"),
        ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["a", "z"]}},
         {"kms:EncryptionContextKeys": ["a", "b"]}, "NoMatch"),
        ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["a", "b", "c"]}},
         {"kms:EncryptionContextKeys": ["a", "b"]}, "Allow"),
        ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["a"]}}, {}, "Allow"),
        ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["a"]}}, {}, "NoMatch"),
        ({"StringEquals": {"kms:CallerAccount": "111122223333",
                           "kms:RecipientAttestation:PCR8": "00"}},
         {"kms:CallerAccount": ["111122223333"]}, "NoMatch"),  # keys in a block are ANDed
    ],
)
def test_condition_operators(condition: dict[str, Any], values: dict[str, list[str]], expected: str) -> None:
    assert outcome(policy(allow(Condition=condition)), ctx(**values)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "[]", "{}", '{"Statement": []}', "not json",
        policy({"Effect": "Maybe", "Principal": "*", "Action": "kms:*", "Resource": "*"}),
        policy({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),  # no Principal
        policy({"Effect": "Allow", "Principal": "*", "Resource": "*"}),  # no Action
        policy(allow(Condition={"NumericLessThan": {"kms:x": "1"}})),  # unsupported operator
        policy(allow(Condition={"Sometimes:StringEquals": {"kms:x": "1"}})),
        policy(allow(Extra=1)),
        json.dumps({"Version": "2020-01-01", "Statement": [allow()]}),
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(MalformedPolicyDocumentException):
        parse_policy(text)
