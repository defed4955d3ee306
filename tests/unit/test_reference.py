"""docs/reference.md, generated from the models (`make docs`): the committed copy is current,
it lists every field, and a field without a description cannot slip in."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from legation.api.v1alpha1 import Secret, ratelimit_annotation
from legation.api.v1alpha1.kinds import CUSTOM_KINDS as KINDS
from legation.controller.commands import reference
from legation.controller.commands.reference import ReferenceDocError, format_duration, model_rows

ROOT = Path(__file__).parents[2]
REFERENCE = ROOT / "docs" / "reference.md"


def test_committed_reference_is_current() -> None:
    committed = REFERENCE.read_text() if REFERENCE.exists() else ""
    assert committed == reference.render(), "docs/reference.md is out of date: run `make docs`"


def test_a_changed_description_makes_it_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ratelimit_annotation.KEY_FORMS, "ip", "the caller's address")
    assert reference.render() != REFERENCE.read_text()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_spec_field_has_a_row(kind: object) -> None:
    spec = kind.spec_model  # type: ignore[attr-defined]
    text = reference.render()
    for name, field in spec.model_fields.items():
        assert f"| `spec.{field.alias or name}` |" in text, name


def test_secret_and_metadata_rows() -> None:
    paths = [r.path for r in model_rows(Secret, skip=("apiVersion", "kind", "metadata", "status"))]
    assert paths == ["type", "data", "stringData", "immutable"]
    assert '| `metadata.namespace` | string | `"default"` |' in reference.render()


def test_nested_rows_types_and_defaults() -> None:
    (mapping,) = [k for k in KINDS if k.kind == "Mapping"]
    rows = {r.path: r for r in model_rows(mapping.model, skip=("apiVersion", "kind", "metadata", "status"))}
    assert rows["spec.service"].default == "required"
    assert (rows["spec.timeout"].type, rows["spec.timeout"].default) == ("duration", "`15s`")
    assert (rows["spec.retries.attempts"].type, rows["spec.retries"].default) == (
        "integer, 1 to 10",
        "absent",
    )
    assert rows["spec.allowUpgrade"].type == "list of `websocket`"
    (host,) = [k for k in KINDS if k.kind == "Host"]
    host_rows = {r.path: r for r in model_rows(host.model, skip=("apiVersion", "kind", "metadata", "status"))}
    assert host_rows["spec.insecure"].default == '`{"action": "Redirect"}`'  # a default factory's value


def test_a_field_without_a_description_is_refused() -> None:
    class Undocumented(BaseModel):
        documented: int = Field(default=1, description="Has words.")
        bare: int = 2

    with pytest.raises(ReferenceDocError, match="bare: no description"):
        model_rows(Undocumented)


def test_rate_limit_examples_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "| `5000/15m per header:x-api-key` |" in reference.render()
    monkeypatch.setattr(ratelimit_annotation, "EXAMPLES", (("100/min per ip", "wrong"),))
    with pytest.raises(ratelimit_annotation.RateLimitAnnotationError):
        reference.render()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0"), (0.2, "200ms"), (15, "15s"), (60, "1m"), (600, "10m"), (5400, "90m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_main_writes_the_file(tmp_path: Path) -> None:
    assert reference.main([str(tmp_path / "docs" / "reference.md")]) == 0
    assert (tmp_path / "docs" / "reference.md").read_text() == reference.render()


def test_the_readme_links_the_reference() -> None:
    assert "(docs/reference.md)" in (ROOT / "README.md").read_text()
