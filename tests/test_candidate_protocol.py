"""The candidate's wire format, its in-worker predict path and the client without a worker.

Frames round-trip (every byte of a body), refuse oversized or truncated input; the
worker's :class:`Predictor` answers exactly what the router would (the same body as
``format_predictions``, the parse error's status); a client with nobody listening fails
at once as ``unavailable``, never raises.
"""

import asyncio
import json
import socket

import mlflow.pyfunc
import pytest
from _candidate_models import save_sklearn, socket_dir

from mlflow_kpigate.backends.local import candidate_protocol as protocol
from mlflow_kpigate.backends.local.candidate_client import CandidateClient
from mlflow_kpigate.backends.local.candidate_protocol import (
    PingRequest,
    Pong,
    PredictRequest,
    PredictResponse,
    ProtocolError,
    decode_request,
    encode_frame,
    read_frame,
    recv_frame,
)
from mlflow_kpigate.backends.local.model_calls import input_schema
from mlflow_kpigate.backends.local.predictor import Predictor
from mlflow_kpigate.core.payloads import format_predictions, interpret_output, parse_payload


def _stream(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def _read(data: bytes, max_size: int = protocol.MAX_FRAME):
    return asyncio.run(_read_async(data, max_size))


async def _read_async(data: bytes, max_size: int):
    return await read_frame(_stream(data), max_size)


def test_a_predict_request_carries_every_byte_of_its_body():
    body = bytes(range(256)) * 3 + '{"é": "\u2603"}'.encode()
    frame = encode_frame(PredictRequest(body, "application/json; charset=utf-8").to_wire())
    assert decode_request(_read(frame)) == PredictRequest(
        body, "application/json; charset=utf-8")
    assert decode_request(_read(encode_frame(PingRequest().to_wire()))) == PingRequest()


def test_responses_round_trip():
    response = PredictResponse(True, b'{"predictions": [0.5]}', [0.5], [1], True, 0.01)
    assert PredictResponse.from_wire(_read(encode_frame(response.to_wire()))) == response
    failed = PredictResponse(False, None, [], [], False, 0.0, "bad", parse_status=415)
    assert PredictResponse.from_wire(_read(encode_frame(failed.to_wire()))) == failed
    assert Pong.from_wire(_read(encode_frame(Pong(12, 3).to_wire()))) == Pong(12, 3)
    with pytest.raises(ProtocolError, match="expected a pong"):
        Pong.from_wire(response.to_wire())


def test_frames_that_are_too_large_truncated_or_not_objects_are_refused():
    frame = encode_frame({"op": "ping"})
    with pytest.raises(ProtocolError, match="exceeds the 4-byte limit"):
        _read(frame, max_size=4)
    assert _read(b"") is None  # a clean end between frames
    with pytest.raises(asyncio.IncompleteReadError):
        _read(frame[:-1])
    with pytest.raises(ProtocolError, match="not an object"):
        _read(len(b"[1]").to_bytes(4, "big") + b"[1]")
    with pytest.raises(ProtocolError, match="unknown request op"):
        decode_request({"op": "dance"})
    with pytest.raises(ProtocolError, match="string body"):
        decode_request({"op": "predict", "body": 3, "content_type": None})


def test_blocking_reads_see_the_same_frames():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(encode_frame(Pong(1, 0).to_wire()))
        assert Pong.from_wire(recv_frame(right)) == Pong(1, 0)
        left.sendall(encode_frame({"op": "ping"})[:5])
        left.close()
        with pytest.raises(ConnectionError):
            recv_frame(right)


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory):
    path = save_sklearn(tmp_path_factory.mktemp("models") / "sklearn")
    return mlflow.pyfunc.load_model(str(path))


def test_the_predictor_answers_what_the_router_would(sklearn_model):
    predictor = Predictor(sklearn_model, "7", 0.3)
    schema = input_schema(sklearn_model)
    for body, content_type in [
        (json.dumps({"dataframe_split": {"columns": ["a", "b"], "data": [[0.1, -2.0]]}}),
         None),
        (json.dumps({"dataframe_records": [{"a": 1, "b": 2}, {"a": -3, "b": 0.5}]}),
         "application/json"),
        ("a,b\n0.5,0.5\n-1,-1\n2,0\n", "text/csv"),
    ]:
        response = predictor.predict(PredictRequest(body.encode(), content_type))
        payload = parse_payload(body.encode(), content_type, schema)
        raw = sklearn_model.predict(payload.frame)
        expected = interpret_output(raw, len(payload.frame), 0.3)
        assert response.ok
        assert response.error is None
        assert response.body == format_predictions(raw).encode()
        assert (response.scores, response.predicted, response.understood) == (
            expected.scores, expected.predicted, True)
        assert response.latency_s > 0
    assert predictor.running == 0
    assert predictor.oldest_age() is None


def test_the_predictor_reports_parse_errors_and_signature_rejections(sklearn_model):
    predictor = Predictor(sklearn_model, "7", 0.5)
    bad = predictor.predict(PredictRequest(b"{not json", None))
    assert (bad.ok, bad.parse_status) == (False, 400)
    assert bad.error is not None
    assert bad.error.startswith("body is not valid JSON")
    unsupported = predictor.predict(PredictRequest(b"a=1", "text/plain"))
    assert unsupported.parse_status == 415
    missing = predictor.predict(PredictRequest(
        json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1.0]]}}).encode(), None))
    assert (missing.ok, missing.invalid_input, missing.parse_status) == (False, True, None)
    assert missing.error is not None
    assert missing.error.startswith("input does not match the model's signature")
    assert missing.predicted == [None]


def test_a_client_with_nobody_listening_fails_at_once_as_unavailable():
    async def scenario(path):
        client = CandidateClient(path, version="7", timeout_s=5, max_inflight=2)
        attempt = await client.score(b"{}", None, 2)
        assert not await client.ping(1.0)
        await client.close()
        return attempt, client.counters

    with socket_dir() as directory:
        attempt, counters = asyncio.run(scenario(directory / "none.sock"))
        assert attempt.error is not None
        assert attempt.error.startswith("candidate process unavailable: ")
        assert attempt.output.scores == [None, None]
        assert attempt.body is None
        assert counters["unavailable"] == 1
        # A socket file nobody listens on (a dead worker's): refused, also unavailable.
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(directory / "stale.sock"))
        stale.close()
        attempt, _ = asyncio.run(scenario(directory / "stale.sock"))
        assert attempt.error is not None
        assert "unavailable" in attempt.error
