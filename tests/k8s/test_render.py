"""Every kustomization under k8s/ renders, and the pure-Python renderer agrees with kustomize."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.k8s import manifests
from tests.k8s.manifests import KUSTOMIZATIONS, render, renderer


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_renders_unique_named_objects(directory: str) -> None:
    resources = render(directory)
    assert resources
    ids = [renderer().resource_id(res) for res in resources]
    assert len(ids) == len(set(ids))
    for resource in resources:
        assert resource["apiVersion"] and resource["kind"] and resource["metadata"]["name"]


@pytest.mark.parametrize("directory", (*KUSTOMIZATIONS, "base"))
def test_python_renderer_matches_kubectl_kustomize(directory: str) -> None:
    if manifests.kubectl() is None:
        pytest.skip("kubectl is not installed; the renderer's own tests below still run")
    ours = {renderer().resource_id(res): res for res in render(directory)}
    theirs = {renderer().resource_id(res): res for res in manifests.render_with_kubectl(directory)}
    assert ours.keys() == theirs.keys()
    for key, resource in ours.items():
        assert resource == theirs[key], key


def _write(directory: Path, name: str, *documents: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(yaml.safe_dump_all(documents, sort_keys=False))


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "app"},
    "spec": {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.local:5000/app:1",
                        "ports": [{"containerPort": 80, "name": "http"}],
                        "resources": {"limits": {"memory": "1Gi"}},
                    },
                    {"name": "side", "image": "other"},
                ],
                "tolerations": [{"key": "a", "operator": "Exists"}],
            }
        }
    },
}


def test_strategic_merge_merges_keyed_lists_and_replaces_the_others(tmp_path: Path) -> None:
    _write(tmp_path / "base", "deploy.yaml", DEPLOYMENT)
    _write(tmp_path / "base", "kustomization.yaml", {"resources": ["deploy.yaml"]})
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "main", "resources": {"limits": {"example.com/dev": 1}}},
                        {"name": "extra", "image": "extra"},
                    ],
                    "tolerations": [{"key": "b", "operator": "Exists"}],
                }
            }
        },
    }
    _write(tmp_path / "over", "patch.yaml", patch)
    _write(
        tmp_path / "over",
        "kustomization.yaml",
        {
            "resources": ["../base"],
            "patches": [{"path": "patch.yaml"}],
            "images": [{"name": "registry.local:5000/app", "newTag": "2"}],
        },
    )
    (deployment,) = renderer().render(tmp_path / "over")
    if manifests.kubectl() is not None:
        assert [deployment] == manifests.render_with_kubectl(str(tmp_path / "over"))
    spec = deployment["spec"]["template"]["spec"]
    # Patched elements first, in the patch's order, then the rest: kustomize's order.
    assert [c["name"] for c in spec["containers"]] == ["main", "extra", "side"]
    main = spec["containers"][0]
    assert main["resources"]["limits"] == {"memory": "1Gi", "example.com/dev": 1}
    assert main["ports"] == [{"containerPort": 80, "name": "http"}]
    assert main["image"] == "registry.local:5000/app:2"
    assert spec["containers"][2]["image"] == "other"
    assert spec["tolerations"] == [{"key": "b", "operator": "Exists"}]


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    _write(tmp_path, "deploy.yaml", DEPLOYMENT)
    _write(tmp_path, "kustomization.yaml", {"resources": ["deploy.yaml"], "namePrefix": "x-"})
    with pytest.raises(renderer().RenderError, match="namePrefix"):
        renderer().render(tmp_path)


def test_renderer_refuses_duplicate_objects(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", DEPLOYMENT)
    _write(tmp_path, "b.yaml", DEPLOYMENT)
    _write(tmp_path, "kustomization.yaml", {"resources": ["a.yaml", "b.yaml"]})
    with pytest.raises(renderer().RenderError, match="defined twice"):
        renderer().render(tmp_path)


def test_renderer_refuses_a_patch_that_matches_nothing(tmp_path: Path) -> None:
    _write(tmp_path, "deploy.yaml", DEPLOYMENT)
    stray = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nope"}}
    _write(tmp_path, "patch.yaml", stray)
    _write(
        tmp_path,
        "kustomization.yaml",
        {"resources": ["deploy.yaml"], "patches": [{"path": "patch.yaml"}]},
    )
    with pytest.raises(renderer().RenderError, match="matches no resource"):
        renderer().render(tmp_path)


def test_both_autoscaler_components_together_are_rejected(tmp_path: Path) -> None:
    # They define the same HorizontalPodAutoscaler; one overlay must never get two.
    components = manifests.K8S / "components"
    _write(
        tmp_path,
        "kustomization.yaml",
        {
            "resources": [str(manifests.K8S / "base")],
            "components": [
                str(components / "hpa-queue-time"),
                str(components / "hpa-pending-requests"),
            ],
        },
    )
    with pytest.raises(renderer().RenderError, match="defined twice"):
        renderer().render(tmp_path)


def test_cli_prints_the_rendered_documents(capsys: pytest.CaptureFixture[str]) -> None:
    assert renderer().main([str(manifests.K8S / "overlays" / "cpu")]) == 0
    printed = [doc for doc in yaml.safe_load_all(capsys.readouterr().out) if doc]
    assert printed == render("overlays/cpu")
