"""Regression tests of four HTTP defects an adversarial client found (issue 11): each gets a
clear problem answer at once, in words of ours, never the interpreter's."""

from __future__ import annotations

from tests.support.api import ApiClient, raw_tls, read_until_closed


def raw_answer(client: ApiClient, request: bytes) -> tuple[int, bytes]:
    with raw_tls(client.address, client.context) as sock:
        sock.sendall(request)
        reply = read_until_closed(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_signal_written_as_a_json_number_with_an_exponent_is_a_number(
    client: ApiClient,
) -> None:
    job_id = client.create("sleep", "30")
    response = client.request("POST", f"/jobs/{job_id}/stop", {"signal": 9e0})
    assert response.status == 200
    assert client.wait(job_id)["signal"] == 9
    refused = client.request("POST", f"/jobs/{job_id}/stop", {"signal": 1e3})
    assert refused.status == 400 and "1000" in refused.problem()["detail"]
    fraction = client.request("POST", f"/jobs/{job_id}/stop", {"signal": 2.5})
    assert fraction.status == 400
    assert fraction.problem()["detail"] == (
        "field 'signal' must be a signal name like 'SIGTERM' or a whole number, not 2.5"
    )


def test_an_offset_of_five_thousand_digits_is_refused_in_our_words(client: ApiClient) -> None:
    job_id = client.create("true")
    response = client.get(f"/jobs/{job_id}/stdout?offset={'9' * 5000}")
    assert response.status == 400
    detail = response.problem()["detail"]
    assert detail == "query parameter 'offset' is too large (at most 18 digits)"
    assert "int_max_str_digits" not in detail and len(detail) < 100
    padded = client.get(f"/jobs/{job_id}/stdout?offset={'0' * 5000}3")  # leading zeros: fine
    assert padded.status == 200


def test_two_different_content_lengths_are_refused(client: ApiClient) -> None:
    body = b'{"cmd": "true"}'
    status, answer = raw_answer(client, (
        b"PUT /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body) + 5)
    ) + body)
    assert status == 400 and b"conflicting Content-Length headers" in answer
    # The same length twice is one length (RFC 9112 allows accepting it).
    status, _ = raw_answer(client, (
        b"PUT /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close"
        b"\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body))
    ) + body)
    assert status == 201


def test_a_chunk_announcing_more_than_the_limit_is_refused_at_once(client: ApiClient) -> None:
    # 2 MiB announced, a few bytes sent: the answer must not wait for the rest
    # (waiting would end in 408 when the request's deadline passed).
    status, answer = raw_answer(client, (
        b"PUT /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n200000\r\n{\"cmd\""
    ))
    assert status == 413, answer
    assert b"urn:jobkit:problem:body-too-large" in answer
