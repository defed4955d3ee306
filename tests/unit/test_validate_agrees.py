"""`legation validate` is a view of the controller's pipeline: same verdicts, same reasons, same
`file:line` and field path as the statuses the controller shows on its page, API and logs."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from legation.controller.commands.validate import validate_snapshot
from legation.controller.serving.app import _log_problems
from legation.controller.serving.pipeline import Stages, build, status_errors
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions

HEADER = "apiVersion: legation.dev/v1alpha1\n"

AUTH_SERVICES = """\
kind: AuthService
metadata: {name: zeta, namespace: gw}
spec: {service: "authz-z:9001"}
---
apiVersion: legation.dev/v1alpha1
kind: AuthService
metadata: {name: alpha, namespace: gw}
spec: {service: "authz-a:9001"}
"""

BAD_POLICY = """\
kind: JWTPolicy
metadata: {name: x, namespace: t}
spec:
  providers:
    - name: corp
      issuer: https://idp.example.com/
      algorithms: [none]
      jwks: {uri: https://idp.example.com/jwks.json}
  rules: [{match: {pathPrefix: /}, requires: {anyOf: [corp]}}]
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: m, namespace: t}
spec:
  prefix: /m/
  service: m:80
  auth: {policy: x}
"""

TYPO = """\
# the document starts on line 2; the offending key is on line 7
kind: Mapping
metadata: {name: hello, namespace: t}
spec:
  service: hello:80
  prefix: /hello/
  prefx: /typo/
"""


def tree(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(HEADER + textwrap.dedent(text))
    return tmp_path


PLATFORM = frozenset({"gw"})
"""The AuthServices below are in `gw`: the platform namespace here."""


def stages_of(root: Path) -> Stages:
    return build(DirectorySource(root).load(), EnvoyOptions(), platform_namespaces=PLATFORM)


def validate_lines(root: Path) -> list[str]:
    return [str(p) for p in validate_snapshot(DirectorySource(root).load(), platform=PLATFORM).problems]


def controller_lines(root: Path) -> list[str]:
    errors = [e for s in stages_of(root).rejected for e in status_errors(s)]
    return [str(e) for e in sorted(errors, key=lambda e: (e.file, e.line or 0))]


def test_validate_keeps_the_authservice_the_controller_keeps(tmp_path: Path) -> None:
    root = tree(tmp_path, auth=AUTH_SERVICES)
    stages = stages_of(root)
    assert stages.result.ir.auth_service is not None and stages.result.ir.auth_service.id == "gw/alpha"
    assert validate_lines(root) == [
        f"{root}/auth.yaml:3: AuthService gw/zeta: metadata.name: "
        "only one AuthService is allowed; AuthService gw/alpha is older"
    ]
    assert validate_lines(root) == controller_lines(root)


def test_a_mapping_on_a_rejected_policy_names_the_policys_problem(tmp_path: Path) -> None:
    root = tree(tmp_path, team=BAD_POLICY)
    lines = validate_lines(root)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{root}/team.yaml:8: JWTPolicy t/x: spec.providers[0].algorithms")
    policy_problem = lines[0].split("JWTPolicy t/x: ", 1)[1]
    assert lines[1] == (
        f"{root}/team.yaml:18: Mapping t/m: spec.auth.policy: JWTPolicy t/x is rejected: {policy_problem}"
    )
    assert "no JWTPolicy" not in lines[1]
    assert validate_lines(root) == controller_lines(root)


def test_unknown_key_line_and_path_agree_everywhere(tmp_path: Path) -> None:
    root = tree(tmp_path, hello=TYPO)
    expected = f"{root}/hello.yaml:8: Mapping t/hello: spec.prefx: unknown key (did you mean 'prefix'?)"
    assert validate_lines(root) == [expected]
    assert controller_lines(root) == [expected]
    (status,) = stages_of(root).rejected
    assert [(p.line, p.path) for p in status.problems] == [(8, ("spec", "prefx"))]


def test_compiler_problems_get_the_line_of_their_field(tmp_path: Path) -> None:
    root = tree(tmp_path, hello=TYPO.replace("  prefx: /typo/\n", "  auth: {policy: nope}\n"))
    (status,) = stages_of(root).rejected
    assert [(p.line, p.path) for p in status.problems] == [(8, ("spec", "auth", "policy"))]
    assert validate_lines(root) == [
        f"{root}/hello.yaml:8: Mapping t/hello: spec.auth.policy: no JWTPolicy 'nope' in namespace t"
    ]


def test_a_broken_file_is_a_problem_for_validate(tmp_path: Path) -> None:
    root = tree(tmp_path, hello=TYPO.replace("  prefx: /typo/\n", " prefix: /bad-indent/\n"))
    (line,) = validate_lines(root)
    assert line.startswith(f"{root}/hello.yaml:") and "invalid YAML" in line
    assert validate_snapshot(DirectorySource(root).load()).resources == ()


def test_the_controller_log_gives_the_same_line_and_field_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tree(tmp_path, hello=TYPO)
    with caplog.at_level(logging.WARNING, logger="legation.controller"):
        _log_problems(stages_of(root))
    (record,) = [r for r in caplog.records if r.getMessage() == "resource rejected"]
    assert (record.where, record.path) == (f"{root}/hello.yaml:8", "spec.prefx")  # type: ignore[attr-defined]
    assert record.error == validate_lines(root)[0]  # type: ignore[attr-defined]


def test_an_invalid_namespace_default_policy_fails_its_namespace_closed(tmp_path: Path) -> None:
    text = BAD_POLICY.replace("spec:\n  providers:", "spec:\n  namespaceDefault: true\n  providers:", 1)
    root = tree(tmp_path, team=text.replace("  auth: {policy: x}\n", ""))
    stages = stages_of(root)
    assert stages.result.ir.routes == ()  # never served without its namespace's policy
    mapping = [line for line in validate_lines(root) if "Mapping t/m" in line]
    assert mapping == [
        f"{root}/team.yaml:16: Mapping t/m: spec.auth: the namespace's default JWTPolicy t/x is rejected "
        f"({mapping[0].split('is rejected (', 1)[1]}"
    ]
    assert "spec.providers[0].algorithms[0]" in mapping[0]
