"""Kubernetes JSON schemas for kubeconform, from the ``kubernetes-validate`` wheel (PyPI).

    python deploy/helm/k8s_schemas.py WHEEL OUT_DIR VERSION [VERSION ...]

kubernetes-validate ships, per Kubernetes release, the strict JSON schemas of every API
object (``v1.37.0-local-strict/deployment-apps-v1.json``: unknown fields are errors),
generated from that release's OpenAPI document. Their references point at
``/api/_definitions.json`` under an ``https://kubernetes.io/api/...`` ``$id``, which
kubeconform would try to fetch over the network. This writes each wanted release's files
to ``OUT_DIR/v<VERSION>/`` under the names kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}``
template asks for (the wheel's own names), with the ``$id`` dropped and every reference
made relative to the file (``_definitions.json#/$defs/...``), so the schemas load from disk
alone. Standard library only.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

PREFIX = "kubernetes_validate/kubernetes-json-schema/"
ABSOLUTE_REF = '"/api/_definitions.json#'
RELATIVE_REF = '"_definitions.json#'


def convert(wheel: Path, out: Path, versions: list[str]) -> dict[str, int]:
    """Write the schemas of ``versions`` (``1.37.0``) under ``out``; return files per version."""
    written: dict[str, int] = {}
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for version in versions:
            source = f"{PREFIX}v{version}-local-strict/"
            members = [n for n in names if n.startswith(source) and n.endswith(".json")]
            if not members:
                available = sorted(
                    {n[len(PREFIX) :].split("-local")[0] for n in names if n.startswith(PREFIX)}
                )
                raise SystemExit(
                    f"k8s_schemas: {wheel.name} has no schemas for Kubernetes {version}; "
                    f"it has {', '.join(available)}"
                )
            target = out / f"v{version}"
            target.mkdir(parents=True, exist_ok=True)
            for member in members:
                text = archive.read(member).decode("utf-8").replace(ABSOLUTE_REF, RELATIVE_REF)
                schema = json.loads(text)
                schema.pop("$id", None)
                leftover = [
                    ref for ref in _refs(schema) if not ref.startswith(("#", "_definitions"))
                ]
                if leftover:
                    raise SystemExit(f"k8s_schemas: {member} refers outside itself: {leftover[:3]}")
                (target / member[len(source) :]).write_text(
                    json.dumps(schema, separators=(",", ":")), encoding="utf-8"
                )
            written[version] = len(members)
    return written


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    wheel, out, *versions = argv
    for version, count in convert(Path(wheel), Path(out), versions).items():
        print(f"k8s_schemas: Kubernetes {version}: {count} schemas", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
