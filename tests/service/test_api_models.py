"""Model uploads over real HTTP: ONNX graphs and safetensors weights, validated before they are
stored, per tenant, and named as ``model://<id>`` in job specs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save

from tests.service.stored_uploads import stored_uploads

ProblemCheck = Callable[..., dict[str, Any]]
SYNTHETIC = "synthetic://?classes=3&shape=1,4,4&train=200&test=10"


def tiny_onnx(op: str = "Relu", features: int = 16, classes: int = 3) -> bytes:
    """Flatten -> Gemm -> ``op`` -> Gemm, written with onnx.helper (no torch needed)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(
            rng.standard_normal((8, features)).astype(np.float32), "fc1.weight"
        ),
        numpy_helper.from_array(np.zeros(8, np.float32), "fc1.bias"),
        numpy_helper.from_array(rng.standard_normal((classes, 8)).astype(np.float32), "fc2.weight"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node(op, ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "fc2.weight", "fc2.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _upload(client: Any, filename: str, content: bytes, **data: str) -> Any:
    return client.post("/v1/models", files={"file": (filename, content)}, data=data)


def test_upload_list_get_delete_and_isolation(live: Any, expect_problem: ProblemCheck) -> None:
    content = tiny_onnx()
    with live.tenant_client() as client, live.tenant_client() as stranger:
        response = _upload(client, "tiny.onnx", content, name="my mlp")
        assert response.status_code == 201, response.text
        model = response.json()
        assert model["id"].startswith("mdl_") and model["uri"] == f"model://{model['id']}"
        assert response.headers["location"].endswith(f"/v1/models/uploads/{model['id']}")
        assert (model["name"], model["format"], model["size"], model["use_as"]) == (
            "my mlp",
            "onnx",
            len(content),
            "model.uri",
        )
        assert model["input_shape"] == [1, 4, 4]
        assert model["parameters"] == 8 * 16 + 8 + 3 * 8 + 3
        assert model["operators"] == ["Flatten", "Gemm", "Relu"]
        assert [m["id"] for m in client.get("/v1/models/uploads").json()["data"]] == [model["id"]]
        assert client.get(f"/v1/models/uploads/{model['id']}").json() == model
        # The built-in catalogue is untouched by the uploads' paths.
        names = [m["name"] for m in client.get("/v1/models").json()["data"]]
        assert "lenet_300_100" in names
        assert client.get("/v1/models/lenet_300_100").status_code == 200
        expect_problem(stranger.get(f"/v1/models/uploads/{model['id']}"), 404)
        assert stranger.get("/v1/models/uploads").json()["data"] == []
        expect_problem(stranger.delete(f"/v1/models/uploads/{model['id']}"), 404)
        key = next(k for k in stored_uploads(live) if k.endswith(f"/models/{model['id']}.onnx"))
        assert client.delete(f"/v1/models/uploads/{model['id']}").status_code == 204
        assert key not in stored_uploads(live)
        expect_problem(client.get(f"/v1/models/uploads/{model['id']}"), 404)


def test_unsupported_or_malformed_files_are_refused_and_nothing_is_stored(
    live: Any, expect_problem: ProblemCheck
) -> None:
    cases = [
        ("erf.onnx", tiny_onnx(op="Erf"), "unsupported_operator", "'Erf'"),
        ("junk.onnx", b"\x08\x01garbage that is no protobuf", "malformed", "ONNX"),
        ("model.pt", b"anything", "unsupported_format", ".onnx"),
        ("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "malformed", "safetensors"),
    ]
    with live.tenant_client() as client:
        before = set(stored_uploads(live))
        for filename, content, kind, words in cases:
            body = expect_problem(_upload(client, filename, content), 422)
            (error,) = body["errors"]
            assert error["loc"] == "file" and error["type"] == kind, body
            assert words in error["msg"], error
        assert client.get("/v1/models/uploads").json()["data"] == []
        assert set(stored_uploads(live)) == before
        assert not [p for p in live.settings.model_root.rglob("*") if p.is_file()]


def test_external_data_is_refused(live: Any, expect_problem: ProblemCheck) -> None:
    proto = onnx.load_model_from_string(tiny_onnx())
    weight = proto.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../etc/passwd")
    with live.tenant_client() as client:
        body = expect_problem(_upload(client, "ext.onnx", proto.SerializeToString()), 422)
        assert body["errors"][0]["type"] == "external_data"


def test_size_cap(service_factory: Any, expect_problem: ProblemCheck) -> None:
    small = service_factory(max_model_bytes=500)
    with small.tenant_client() as client:
        expect_problem(_upload(client, "tiny.onnx", tiny_onnx()), 413)
        assert client.get("/v1/models/uploads").json()["data"] == []


def test_jobs_name_uploads_checked_at_admission(
    live: Any, spec: dict[str, Any], expect_problem: ProblemCheck
) -> None:
    weights = save({"fc.weight": np.zeros((3, 16), np.float32)})
    with live.tenant_client() as client, live.tenant_client() as stranger:
        graph = _upload(client, "tiny.onnx", tiny_onnx()).json()
        tensors = _upload(client, "w.safetensors", weights)
        assert tensors.status_code == 201, tensors.text
        assert (tensors.json()["format"], tensors.json()["use_as"]) == (
            "safetensors",
            "model.weights",
        )
        job = {**spec, "model": {"uri": graph["uri"]}, "dataset": {"uri": SYNTHETIC}}
        job["dataset"]["validation_size"] = 0
        accepted = client.post("/v1/jobs", json=job)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["spec"]["model"]["uri"] == graph["uri"]
        assert accepted.json()["spec"]["model"]["arch"] == "uploaded"
        body = expect_problem(stranger.post("/v1/jobs", json=job), 422)
        assert [(e["loc"], e["type"]) for e in body["errors"]] == [("model.uri", "unknown_model")]
        wrong = {**job, "model": {"uri": tensors.json()["uri"]}}
        body = expect_problem(client.post("/v1/jobs", json=wrong), 422)
        assert body["errors"][0]["type"] == "wrong_kind_of_model"
        other_shape = {**job, "dataset": {"uri": SYNTHETIC.replace("1,4,4", "1,5,5")}}
        body = expect_problem(client.post("/v1/jobs", json=other_shape), 422)
        assert body["errors"][0]["type"] == "shape_mismatch"
        both = {**job, "model": {"uri": graph["uri"], "arch": "lenet_300_100"}}
        body = expect_problem(client.post("/v1/jobs", json=both), 422)
        assert body["errors"][0]["loc"] == "model.arch"
        with_weights = {**job, "model": {"arch": "mlp", "hidden_sizes": [4]}}
        with_weights["model"]["weights"] = tensors.json()["uri"]
        assert client.post("/v1/jobs", json=with_weights).status_code == 202
        with_weights["model"]["weights"] = graph["uri"]
        body = expect_problem(client.post("/v1/jobs", json=with_weights), 422)
        assert (
            body["errors"][0]
            == {
                "loc": "model.weights",
                "msg": f"{graph['uri']} is a onnx upload: name it in model.uri, not model.weights",
                "type": "wrong_kind_of_model",
            }
            or body["errors"][0]["type"] == "wrong_kind_of_model"
        )
        inside = live.settings.model_root / "x" / "mdl.onnx"
        body = expect_problem(
            client.post("/v1/jobs", json={**job, "model": {"uri": str(inside)}}), 422
        )
        assert body["errors"][0]["type"] == "path_not_allowed"


def test_a_model_larger_than_the_body_cap_uploads(live: Any) -> None:
    """Model uploads stream under their own cap, not the JSON bodies' one."""
    content = tiny_onnx(features=48_000)  # 1.5 MB of weights
    assert len(content) > live.settings.max_body_bytes
    with live.tenant_client() as client:
        response = _upload(client, "wide.onnx", content)
        assert response.status_code == 201, response.text
        assert response.json()["size"] == len(content)
