"""Unknown keys name the closest key the model accepts at that place."""

from __future__ import annotations

import textwrap

from legation.api.v1alpha1 import Mapping, parse_resource
from legation.core.errors import ConfigError
from legation.core.model_keys import did_you_mean, keys_at
from legation.core.yamlfile import load_documents
from legation.ratelimit.config import DomainConfig


def test_keys_at_walks_optional_models_lists_and_aliases() -> None:
    assert {"prefix", "allowUpgrade", "circuitBreakers"} <= keys_at(Mapping, ("spec",))
    assert keys_at(Mapping, ("spec", "retries")) == {"attempts", "on", "perTryTimeout"}
    assert keys_at(Mapping, ("spec", "nope")) == set()


def test_did_you_mean_only_for_a_close_key() -> None:
    assert did_you_mean(Mapping, ("spec", "prefx")) == " (did you mean 'prefix'?)"
    assert did_you_mean(Mapping, ("spec", "allowUpgrades")) == " (did you mean 'allowUpgrade'?)"
    assert did_you_mean(Mapping, ("spec", "zzzzzz")) == ""
    assert did_you_mean(Mapping, ("spec", 0)) == ""


def test_unknown_key_error_has_the_suggestion_and_the_key_line() -> None:
    text = """\
        # a comment, so that the document does not start on line 1
        apiVersion: legation.dev/v1alpha1
        kind: Mapping
        metadata: {name: m, namespace: ns}
        spec:
          service: a:80
          prefx: /x/
          retries: {attemps: 2, on: 5xx}
        """
    (doc,) = load_documents(textwrap.dedent(text), file="h.yaml")
    errors = parse_resource(doc)
    assert isinstance(errors, list)
    assert sorted(str(e) for e in errors) == [
        "h.yaml:7: Mapping ns/m: spec.prefx: unknown key (did you mean 'prefix'?)",
        "h.yaml:8: Mapping ns/m: spec.retries.attemps: unknown key (did you mean 'attempts'?)",
        "h.yaml:8: Mapping ns/m: spec.retries.attempts: Field required",
    ]


def test_suggestions_in_other_configs_too() -> None:
    (doc,) = load_documents("domain: d\ndescriptors:\n  - key: k\n    valu: v\n", file="c.yaml")
    errors: list[ConfigError] = []
    assert doc.validate(DomainConfig, errors) is None
    assert [str(e) for e in errors] == ["c.yaml:4: descriptors[0].valu: unknown key (did you mean 'value'?)"]
