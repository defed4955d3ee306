"""Bounded work per YAML input: anchors and aliases are refused (a "billion laughs" of a few
hundred bytes once made the controller use 1.26 GB), files over the size limit are refused unread,
and nesting too deep for Python is an error, everywhere YAML is read: the controller's directory
source (which keeps a refused file's last good version), `legation validate`, and the authz and
rate limit config loaders."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from legation.authz.config import load_policies, load_policy_texts
from legation.controller.sources.directory import DirectorySource
from legation.core.errors import ConfigError, ConfigErrors
from legation.core.yamlfile import MAX_FILE_BYTES, SafeDumper, load_documents, read_config_files
from legation.ratelimit.config import load_config, load_config_texts

LEGATION = Path(sys.executable).parent / "legation"
NO_ANCHORS = "invalid YAML: anchors and aliases (&name, *name) are not accepted: write each value out"


MAPPING_HEAD = (
    "apiVersion: legation.dev/v1alpha1\nkind: Mapping\nmetadata: {name: lol, namespace: t}\nspec:\n"
)


def billion_laughs(head: str = MAPPING_HEAD) -> str:
    """Nine levels of nine aliases each under `head`'s last key: 9**9 strings once expanded,
    under 800 bytes as text."""
    lines = [head, '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"  {level}: &{level} [{','.join([f'*{previous}'] * 9)}]\n")
    return "".join(lines)


MAPPING = (
    "apiVersion: legation.dev/v1alpha1\nkind: Mapping\n"
    "metadata: {name: m, namespace: t}\nspec: {prefix: /m/, service: 'm:80'}\n"
)


# --- load_documents --------------------------------------------------------------------------------


def test_billion_laughs_is_refused_fast_with_little_memory() -> None:
    text = billion_laughs()
    assert len(text) < 800
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as info:
            load_documents(text, file="lol.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 2 << 20, peak
    assert str(info.value) == f"lol.yaml:5: {NO_ANCHORS}"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: &x 1\n", 1),  # an anchor alone: refused too, Kubernetes objects never need one
        ("a: 1\nb: *x\n", 2),  # an alias without its anchor
        ("a: {k: v}\nb:\n  <<: *a\n", 3),  # a merge key
        ("- [&x 1, 2]\n", 1),  # in a flow sequence
        ('{"a":&x 1}\n', 1),  # JSON-like adjacency
        ("\ufeff&x a: 1\n", 1),  # after a byte-order mark
        ("--- &x\na: 1\n", 1),  # on the document
    ],
)
def test_anchors_and_aliases_are_refused_with_their_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_documents(text, file="f.yaml")
    assert (info.value.line, info.value.reason) == (line, NO_ANCHORS)


def test_an_ampersand_in_a_value_is_only_a_character() -> None:
    text = "uri: https://idp.example.com/jwks?a=1&b=2\nq: 'x & y'\nr: \"&z\"\n"
    (doc,) = load_documents(text, file="f.yaml")
    assert doc.data == {"uri": "https://idp.example.com/jwks?a=1&b=2", "q": "x & y", "r": "&z"}


@pytest.mark.parametrize(
    "text", ["[" * 50_000 + "]" * 50_000, "".join(" " * i + "a:\n" for i in range(2000))]
)
def test_nesting_too_deep_is_an_error_not_a_crash(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_documents(text, file="deep.yaml")
    assert str(info.value) == "deep.yaml: invalid YAML: nested too deeply"


def test_what_we_write_we_read_back() -> None:
    shared = {"unit": "second", "requests_per_unit": 1}
    text = yaml.dump({"a": shared, "b": shared}, Dumper=SafeDumper)
    assert "&" not in text and "*" not in text
    (doc,) = load_documents(text, file="f.yaml")
    assert doc.data == {"a": shared, "b": shared}


# --- the size limit -------------------------------------------------------------------------------


def test_the_size_limit_is_one_mebibyte() -> None:
    assert MAX_FILE_BYTES == 1 << 20


def sized(path: Path, size: int) -> Path:
    """A valid manifest padded with a comment to exactly `size` bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MAPPING + "#" + "x" * (size - len(MAPPING) - 2) + "\n")
    assert path.stat().st_size == size
    return path


def test_a_file_over_the_limit_is_refused_naming_file_and_limit(tmp_path: Path) -> None:
    sized(tmp_path / "ok.yaml", MAX_FILE_BYTES)
    assert [f for f, _ in read_config_files(tmp_path)] == [str(tmp_path / "ok.yaml")]
    big = sized(tmp_path / "big.yaml", MAX_FILE_BYTES + 1)
    with pytest.raises(ConfigErrors) as info:
        read_config_files(tmp_path)
    assert str(info.value) == f"{big}: file is larger than 1 MiB, the most a YAML file may hold: split it"


# --- the controller's directory source and legation validate --------------------------------------


def test_the_directory_source_refuses_aliases_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    path = tmp_path / "m.yaml"
    path.write_text(MAPPING)
    assert [d.data["spec"]["prefix"] for d in source.load().documents] == ["/m/"]
    path.write_text(billion_laughs())
    refused = source.load()
    assert [d.data["spec"]["prefix"] for d in refused.documents] == ["/m/"]
    assert refused.kept == (str(path),)
    assert [str(e) for e in refused.errors] == [f"{path}:5: {NO_ANCHORS}"]


def test_the_directory_source_refuses_a_big_file_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    path = tmp_path / "m.yaml"
    path.write_text(MAPPING)
    other = tmp_path / "other.yaml"
    other.write_text(MAPPING.replace("name: m", "name: o").replace("/m/", "/o/"))
    assert len(source.load().documents) == 2
    sized(path, MAX_FILE_BYTES + 1)
    refused = source.load()
    assert [d.data["spec"]["prefix"] for d in refused.documents] == ["/m/", "/o/"]
    assert refused.kept == (str(path),)
    assert [e.reason for e in refused.errors] == [
        "file is larger than 1 MiB, the most a YAML file may hold: split it"
    ]
    sized(path, MAX_FILE_BYTES + 2)  # still too big, changed: still refused, same version
    assert source.load().version == refused.version
    path.write_text(MAPPING.replace("/m/", "/m2/"))
    assert [d.data["spec"]["prefix"] for d in source.load().documents] == ["/m2/", "/o/"]


def test_validate_reports_aliases_and_big_files(tmp_path: Path) -> None:
    (tmp_path / "lol.yaml").write_text(billion_laughs())
    sized(tmp_path / "big.yaml", MAX_FILE_BYTES + 1)
    (tmp_path / "ok.yaml").write_text(MAPPING)
    done = subprocess.run(
        [str(LEGATION), "validate", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{tmp_path / 'big.yaml'}: file is larger than 1 MiB, the most a YAML file may hold: split it",
        f"{tmp_path / 'lol.yaml'}:5: {NO_ANCHORS}",
    ]


# --- the services' config loaders -----------------------------------------------------------------

POLICY = """\
apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {name: p, namespace: t}
spec:
  providers:
    - name: corp
      issuer: &issuer https://idp.example.com/
      jwks: {uri: https://idp.example.com/jwks.json}
  rules: [{match: {pathPrefix: /}, public: true}]
"""


def test_the_authz_loader_refuses_aliases_and_big_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_policy_texts([("p.yaml", POLICY)])
    assert [str(e) for e in info.value.errors] == [f"p.yaml:7: {NO_ANCHORS}"]
    with pytest.raises(ConfigErrors, match="file is larger than 1 MiB"):
        load_policies(sized(tmp_path / "p.yaml", MAX_FILE_BYTES + 1))


def test_the_ratelimit_loader_refuses_aliases_and_big_files(tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigErrors) as info:
        load_config_texts([("r.yaml", billion_laughs("domain: d\n# three lines\n# before\ndescriptors:\n"))])
    assert time.perf_counter() - started < 1.0
    assert [str(e) for e in info.value.errors] == [f"r.yaml:5: {NO_ANCHORS}"]
    with pytest.raises(ConfigErrors, match="file is larger than 1 MiB"):
        load_config(sized(tmp_path / "r.yaml", MAX_FILE_BYTES + 1))
