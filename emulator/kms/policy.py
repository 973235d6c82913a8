"""Key policies: parse, validate and evaluate them as AWS does, for the KMS scope.

Sources: IAM User Guide "Policy evaluation logic" (an explicit Deny wins; no Allow means
an implicit deny), "IAM JSON policy elements: Condition operators" (``...IfExists``,
``ForAnyValue:`` / ``ForAllValues:``, and: a key absent from the request makes positive
operators false and negated ones true; ForAllValues over an absent key is true), and the
KMS Developer Guide "Default key policy" and "Condition keys for AWS Nitro Enclaves"
(``kms:RecipientAttestation:ImageSha384`` is PCR0, ``...:PCR<n>`` lower-case hex; both
absent unless the request's Recipient holds a verified attestation document, so an Allow
conditioned on them does not apply to a request without one).

There is no IAM here, so a principal naming the account (``arn:aws:iam::<acct>:root`` or
the bare account id) is taken to be **any caller of that account**, which is what the
default key policy gives on AWS once IAM policies allow the caller (deviation, documented).

Supported condition operators: String(Not)Equals, String(Not)EqualsIgnoreCase,
String(Not)Like, Arn(Not)Equals, Arn(Not)Like, Null, Bool, each with ``IfExists`` and the
``ForAnyValue:``/``ForAllValues:`` prefixes. Any other operator is refused at PutKeyPolicy
(MalformedPolicyDocumentException naming it) rather than silently ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emulator.kms.errors import AccessDeniedException, MalformedPolicyDocumentException

__all__ = [
    "KeyPolicy",
    "RequestContext",
    "authorize",
    "default_policy",
    "parse_policy",
]

_VERSIONS = ("2012-10-17", "2008-10-17")
_STATEMENT_FIELDS = frozenset(
    {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction",
     "Resource", "NotResource", "Condition"}
)
_BASE_OPERATORS = frozenset(
    {"StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
     "StringLike", "StringNotLike", "ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike",
     "Null", "Bool"}
)
_NEGATED = frozenset(
    {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike"}
)
_ACCOUNT_ID = re.compile(r"^\d{12}$")


def default_policy(account: str) -> str:
    """AWS's default key policy (KMS Developer Guide "Default key policy")."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


@dataclass(frozen=True)
class RequestContext:
    """What a statement is matched against.

    Attributes:
        action: e.g. ``kms:Decrypt``.
        caller_arn: the caller, e.g. ``arn:aws:iam::111122223333:user/AKIDEXAMPLE``.
        caller_account: the caller's account id.
        resource: the key ARN.
        values: condition key (lower case) -> its values; single-valued keys have one.
    """

    action: str
    caller_arn: str
    caller_account: str
    resource: str
    values: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Condition:
    operator: str  # base operator
    set_operator: str | None  # ForAnyValue / ForAllValues
    if_exists: bool
    key: str  # lower case
    values: tuple[str, ...]


@dataclass(frozen=True)
class _Statement:
    allow: bool
    principals: tuple[str, ...] | None  # None: NotPrincipal form
    not_principals: tuple[str, ...]
    actions: tuple[str, ...]
    action_negated: bool
    resources: tuple[str, ...]
    resource_negated: bool
    conditions: tuple[_Condition, ...]


@dataclass(frozen=True)
class KeyPolicy:
    """A parsed, validated key policy."""

    statements: tuple[_Statement, ...]

    def evaluate(self, context: RequestContext) -> str:
        """``"Deny"`` (explicit), ``"Allow"``, or ``"NoMatch"`` (implicit deny)."""
        allowed = False
        for statement in self.statements:
            if _applies(statement, context):
                if not statement.allow:
                    return "Deny"
                allowed = True
        return "Allow" if allowed else "NoMatch"


def authorize(policy: KeyPolicy, context: RequestContext) -> None:
    """Raise AccessDeniedException unless the policy allows the request.

    The messages are AWS's (a genuine one is quoted in aws/aws-nitro-enclaves-sdk-c
    issue #157; the "no resource-based policy allows" form is IAM's documented wording).
    """
    outcome = policy.evaluate(context)
    if outcome == "Allow":
        return
    head = (
        f"User: {context.caller_arn} is not authorized to perform: {context.action} "
        f"on resource: {context.resource}"
    )
    if outcome == "Deny":
        raise AccessDeniedException(f"{head} with an explicit deny in a resource-based policy")
    raise AccessDeniedException(
        f"{head} because no resource-based policy allows the {context.action} action"
    )


# -------------------------------------------------------------------- parsing

def _malformed(detail: str) -> MalformedPolicyDocumentException:
    return MalformedPolicyDocumentException(f"The key policy is malformed: {detail}")


def parse_policy(text: str) -> KeyPolicy:
    """Parse and validate a key policy document.

    Raises:
        MalformedPolicyDocumentException: not JSON, or not a valid policy for this scope.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise _malformed("it is not valid JSON") from None
    if not isinstance(document, dict):
        raise _malformed("the document must be a JSON object")
    version = document.get("Version")
    if version is not None and version not in _VERSIONS:
        raise _malformed(f"Version must be one of {', '.join(_VERSIONS)}, got {version!r}")
    raw = document.get("Statement")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _malformed("Statement must be a statement or a non-empty list of statements")
    return KeyPolicy(tuple(_parse_statement(item, index) for index, item in enumerate(raw)))


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _malformed(f"{what} must be a string or a non-empty list of strings")


def _one_of(statement: Mapping[str, Any], name: str, where: str) -> tuple[str, bool]:
    positive, negative = name, f"Not{name}"
    if (positive in statement) == (negative in statement):
        raise _malformed(f"{where} must have exactly one of {positive} and {negative}")
    return (positive, False) if positive in statement else (negative, True)


def _parse_principal(value: Any, where: str) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    if not isinstance(value, dict) or not value:
        raise _malformed(f"{where}: Principal must be \"*\" or an object such as {{\"AWS\": ...}}")
    principals: list[str] = []
    for kind, names in value.items():
        if kind not in ("AWS", "Service", "Federated", "CanonicalUser"):
            raise _malformed(f"{where}: unknown principal type {kind!r}")
        for name in _strings(names, f"{where}: Principal.{kind}"):
            # Only AWS principals can ever be a caller here; the others never match.
            principals.append(name if kind == "AWS" else f"{kind}:{name}")
    return tuple(principals)


def _parse_statement(raw: Any, index: int) -> _Statement:
    where = f"Statement[{index}]"
    if not isinstance(raw, dict):
        raise _malformed(f"{where} must be an object")
    unknown = sorted(set(raw) - _STATEMENT_FIELDS)
    if unknown:
        raise _malformed(f"{where} has unknown element(s) {', '.join(unknown)}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise _malformed(f"{where}: Effect must be \"Allow\" or \"Deny\", got {effect!r}")
    principal_field, principal_negated = _one_of(raw, "Principal", where)
    principals = _parse_principal(raw[principal_field], where)
    action_field, action_negated = _one_of(raw, "Action", where)
    resource_field, resource_negated = _one_of(raw, "Resource", where)
    return _Statement(
        allow=effect == "Allow",
        principals=None if principal_negated else principals,
        not_principals=principals if principal_negated else (),
        actions=_strings(raw[action_field], f"{where}: {action_field}"),
        action_negated=action_negated,
        resources=_strings(raw[resource_field], f"{where}: {resource_field}"),
        resource_negated=resource_negated,
        conditions=_parse_conditions(raw.get("Condition"), where),
    )


def _condition_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise _malformed(f"{where}: condition values must be strings, numbers or booleans")


def _parse_conditions(raw: Any, where: str) -> tuple[_Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise _malformed(f"{where}: Condition must be an object")
    conditions: list[_Condition] = []
    for operator, block in raw.items():
        set_operator, _, base = operator.rpartition(":")
        if set_operator not in ("", "ForAnyValue", "ForAllValues"):
            raise _malformed(f"{where}: unknown condition set operator {set_operator!r}")
        if_exists = base.endswith("IfExists") and base != "IfExists"
        if if_exists:
            base = base[: -len("IfExists")]
        if base not in _BASE_OPERATORS:
            raise _malformed(
                f"{where}: condition operator {operator!r} is not supported by this local KMS "
                f"(supported: {', '.join(sorted(_BASE_OPERATORS))}, with IfExists and "
                "ForAnyValue:/ForAllValues:)"
            )
        if not isinstance(block, dict) or not block:
            raise _malformed(f"{where}: {operator} must map condition keys to values")
        for key, values in block.items():
            items = values if isinstance(values, list) else [values]
            if not items:
                raise _malformed(f"{where}: {operator} {key} has no value")
            conditions.append(
                _Condition(
                    operator=base,
                    set_operator=set_operator or None,
                    if_exists=if_exists,
                    key=str(key).lower(),
                    values=tuple(_condition_value(item, f"{where}: {operator}") for item in items),
                )
            )
    return tuple(conditions)


# -------------------------------------------------------------------- evaluation

def _glob(pattern: str, value: str, *, ignore_case: bool) -> bool:
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


def _principal_matches(principals: Sequence[str], context: RequestContext) -> bool:
    for principal in principals:
        if principal == "*":
            return True
        if principal == context.caller_arn:
            return True
        # The account root, or the bare account id, stands for every caller of the
        # account here (no IAM: see the module docstring).
        if principal in (f"arn:aws:iam::{context.caller_account}:root", context.caller_account):
            return True
    return False


def _applies(statement: _Statement, context: RequestContext) -> bool:
    if statement.principals is not None:
        if not _principal_matches(statement.principals, context):
            return False
    elif _principal_matches(statement.not_principals, context):
        return False
    action_match = any(_glob(a, context.action, ignore_case=True) for a in statement.actions)
    if action_match == statement.action_negated:
        return False
    resource_match = any(_glob(r, context.resource, ignore_case=False) for r in statement.resources)
    if resource_match == statement.resource_negated:
        return False
    return all(_condition_holds(condition, context) for condition in statement.conditions)


def _match_one(operator: str, policy_value: str, request_value: str) -> bool:
    if operator in ("StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals"):
        if operator.startswith("Arn"):
            return _glob(policy_value, request_value, ignore_case=False)
        return policy_value == request_value
    if operator in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return policy_value.casefold() == request_value.casefold()
    if operator in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike"):
        return _glob(policy_value, request_value, ignore_case=False)
    if operator == "Bool":
        return policy_value.lower() == request_value.lower()
    raise AssertionError(operator)  # pragma: no cover - parse_policy refuses the rest


def _condition_holds(condition: _Condition, context: RequestContext) -> bool:
    present = context.values.get(condition.key)
    if condition.operator == "Null":
        absent = not present
        return any((value.lower() == "true") == absent for value in condition.values)
    if not present:
        if condition.if_exists:
            return True
        if condition.set_operator == "ForAllValues":
            return True
        if condition.set_operator == "ForAnyValue":
            return False
        return condition.operator in _NEGATED
    negated = condition.operator in _NEGATED

    def matches(request_value: str) -> bool:
        hit = any(_match_one(condition.operator, value, request_value) for value in condition.values)
        return not hit if negated else hit

    if condition.set_operator == "ForAllValues":
        return all(matches(value) for value in present)
    # Plain operators over a multi-valued key behave as ForAnyValue; negated plain ones
    # require that no request value matches.
    if condition.set_operator is None and negated:
        return all(matches(value) for value in present)
    return any(matches(value) for value in present)
