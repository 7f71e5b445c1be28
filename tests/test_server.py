"""The real server over real gRPC: health, reflection, UNIMPLEMENTED, auth, TLS, keepalive."""

from __future__ import annotations

import asyncio
import pathlib

import grpc
import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from streamcli.client.connection import FirstStatus, connect
from streamcli.client.health import check_health
from streamcli.client.settings import ConnectionSettings
from streamcli.errors import AuthError, UsageError
from streamcli.server.app import RunningServer, ServerConfig, start_server
from tests.support.certs import make_pki
from tests.support.rpc import METHODS, invoke, kind
from tests.support.servers import client, running_server

NINE_RPCS = {
    "StreamUserEvents": "unary_stream",
    "DownloadFile": "unary_stream",
    "SubscribeToNotifications": "unary_stream",
    "UploadFile": "stream_unary",
    "ProcessDataBatch": "stream_unary",
    "CollectMetrics": "stream_unary",
    "Chat": "stream_stream",
    "Collaborate": "stream_stream",
    "ProcessLiveData": "stream_stream",
}
ONE_PER_KIND = {kind(m): m for m in METHODS}
CONTRACT = "streaming/v1/streaming_service.proto"  # its path in the contract, under proto/


async def health(settings: ConnectionSettings, service: str = "", timeout: float = 5.0) -> str:
    async with connect(settings) as conn:
        report = await check_health(conn, service, timeout)
    if report.error is not None:  # the server did not answer: UNREACHABLE, and why
        raise report.error
    return report.status


def test_contract_has_the_nine_rpcs_of_the_specification_with_their_kinds() -> None:
    kinds = {m.name: kind(m) for m in METHODS}
    assert {name: kinds.get(name) for name in NINE_RPCS} == NINE_RPCS
    for method in METHODS:
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"


async def test_health_is_serving(server: RunningServer) -> None:
    settings = ConnectionSettings(address=server.address)
    assert await health(settings) == "SERVING"
    assert await health(settings, "streaming.v1.StreamingService") == "SERVING"
    assert await health(settings, "no.such.Service") == "SERVICE_UNKNOWN"


async def test_reflection_lists_the_service_and_describes_it(server: RunningServer) -> None:
    async with client(server.address) as conn:
        stub = reflection_pb2_grpc.ServerReflectionStub(conn.channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="streaming.v1.StreamingService"),
        ]
        responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"streaming.v1.StreamingService", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto


async def test_reflection_serves_the_contract_under_its_path_with_its_comments(server: RunningServer) -> None:
    async with client(server.address) as conn:
        stub = reflection_pb2_grpc.ServerReflectionStub(conn.channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="streaming.v1.StreamingService"),
            reflection_pb2.ServerReflectionRequest(file_by_filename=CONTRACT),
            reflection_pb2.ServerReflectionRequest(file_by_filename="streamcli/_proto/" + CONTRACT),
        ]
        responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    for response in responses[:2]:
        files = {
            f.name: f
            for f in map(FileDescriptorProto.FromString, response.file_descriptor_response.file_descriptor_proto)
        }
        assert "google/protobuf/timestamp.proto" in files  # the dependencies still come along
        comments = [location.leading_comments for location in files[CONTRACT].source_code_info.location]
        # The service's own comment and an RPC's framing rule, as the proto writes them.
        assert any("offers the four kinds of gRPC methods" in c for c in comments), comments[:5]
        assert any("the first message carries the metadata" in c for c in comments)
    assert responses[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize("rpc_kind", sorted(ONE_PER_KIND))
async def test_every_rpc_kind_requires_the_token(tmp_path: pathlib.Path, rpc_kind: str) -> None:
    method = ONE_PER_KIND[rpc_kind]
    async with running_server(tmp_path, token="s3cret") as server, client(server.address) as conn:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await invoke(conn.stub, method)
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await invoke(conn.stub, method, (("authorization", "Bearer nope"),))
        with pytest.raises(grpc.aio.AioRpcError) as bare:
            await invoke(conn.stub, method, (("authorization", "s3cret"),))
        with pytest.raises(grpc.aio.AioRpcError) as basic:
            await invoke(conn.stub, method, (("authorization", "Basic czNjcmV0"),))
        try:
            await invoke(conn.stub, method, (("authorization", "Bearer s3cret"),))
            right_code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            right_code = exc.code()
    assert {failure.value.code() for failure in (missing, wrong, bare, basic)} == {grpc.StatusCode.UNAUTHENTICATED}
    # Generic tools (grpcurl, buf curl) need to hear which metadata to send, not only streamcli's flags.
    assert missing.value.details() == (
        "missing bearer token: send the metadata 'authorization: Bearer <token>' "
        "(streamcli: --token or STREAMCLI_TOKEN)"
    )
    assert wrong.value.details() == "invalid bearer token"
    not_bearer = (
        "invalid bearer token: send the metadata as 'authorization: Bearer <token>', not another scheme or a bare token"
    )
    assert bare.value.details() == basic.value.details() == not_bearer
    assert "s3cret" not in bare.value.details()  # a token sent without its scheme is not echoed back
    # With the token the call gets past authentication to the method (which may reject the empty request).
    assert right_code != grpc.StatusCode.UNAUTHENTICATED


async def test_health_is_exempt_from_auth_but_reflection_is_not(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path, token="s3cret") as server:
        assert await health(ConnectionSettings(address=server.address)) == "SERVING"
        async with client(server.address) as conn:
            stub = reflection_pb2_grpc.ServerReflectionStub(conn.channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            call = stub.ServerReflectionInfo(iter([request]))
            first = FirstStatus(call)  # (grpc.aio may report its failed write, not the server's early status)
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                _ = [r async for r in call]
        assert first.unmask(failure.value).code() == grpc.StatusCode.UNAUTHENTICATED
        # The client core sends the token, and a failure leaving the connection is translated: a wrong one is AuthError.
        with pytest.raises(AuthError):
            async with client(server.address, token="wrong") as conn:
                await invoke(conn.stub, ONE_PER_KIND["unary_unary"], conn.metadata)


async def test_tls_round_trip_with_a_generated_certificate(tmp_path: pathlib.Path) -> None:
    ca, server_cert, _ = make_pki(tmp_path)
    async with running_server(tmp_path / "data", tls_cert=server_cert.cert, tls_key=server_cert.key) as server:
        address = server.address.replace("127.0.0.1", "localhost")
        assert await health(ConnectionSettings(address=address, ca_cert=ca.cert)) == "SERVING"
        # A plaintext client cannot talk to a TLS server, and is told so (a configuration error).
        with pytest.raises(UsageError, match="TLS/plaintext mismatch"):
            await health(ConnectionSettings(address=server.address), timeout=2)


async def test_mutual_tls_requires_a_client_certificate(tmp_path: pathlib.Path) -> None:
    ca, server_cert, client_cert = make_pki(tmp_path)
    async with running_server(
        tmp_path / "data", tls_cert=server_cert.cert, tls_key=server_cert.key, tls_client_ca=ca.cert
    ) as server:
        address = server.address.replace("127.0.0.1", "localhost")
        with pytest.raises(UsageError, match="requires a client certificate"):
            await health(ConnectionSettings(address=address, ca_cert=ca.cert), timeout=2)
        settings = ConnectionSettings(
            address=address, ca_cert=ca.cert, client_cert=client_cert.cert, client_key=client_cert.key
        )
        assert await health(settings) == "SERVING"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"address": "0.0.0.0:50051"}, "refusing to listen on non-loopback address"),
        ({"tls_cert": pathlib.Path("c.pem")}, "--tls-cert and --tls-key must be given together"),
        ({"tls_client_ca": pathlib.Path("ca.pem")}, "--tls-client-ca needs"),
        ({"token": "  "}, "the token is empty"),
    ],
)
def test_unsafe_or_incomplete_configurations_are_refused(
    tmp_path: pathlib.Path, config: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        ServerConfig(data_dir=tmp_path, **config).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tokens",
    [{"token": "t"}, {"user_tokens": {"alice": "a"}}, {"token": "t", "user_tokens": {"alice": "a"}}],
    ids=["token", "user-token", "both"],
)
@pytest.mark.parametrize("address", ["0.0.0.0:50051", "[::]:50051", "192.0.2.1:50051"])
async def test_tokens_without_tls_on_a_public_address_are_refused(
    tmp_path: pathlib.Path, tokens: dict[str, object], address: str
) -> None:
    config = ServerConfig(data_dir=tmp_path, address=address, **tokens)  # type: ignore[arg-type]
    with pytest.raises(UsageError) as refused:
        config.validate()
    assert str(refused.value) == (
        f"refusing to accept tokens without TLS on non-loopback address {address}: they would cross the network "
        "in clear text; add --tls-cert/--tls-key, or pass --allow-insecure"
    )
    with pytest.raises(UsageError):  # before it binds anything
        await start_server(config)


def test_a_public_bind_with_neither_tls_nor_token_says_to_add_tls(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UsageError) as refused:
        ServerConfig(data_dir=tmp_path, address="0.0.0.0:50051").validate()
    assert str(refused.value) == (
        "refusing to listen on non-loopback address 0.0.0.0:50051 without TLS; "
        "add --tls-cert/--tls-key (and --token), or pass --allow-insecure"
    )


def test_public_bind_is_allowed_with_tls_or_explicit_consent(tmp_path: pathlib.Path) -> None:
    _, server_cert, _ = make_pki(tmp_path)
    tls = {"tls_cert": server_cert.cert, "tls_key": server_cert.key}
    ServerConfig(data_dir=tmp_path, address="0.0.0.0:1", token="t", **tls).validate()  # type: ignore[arg-type]
    ServerConfig(data_dir=tmp_path, address="0.0.0.0:1", **tls).validate()  # type: ignore[arg-type]
    ServerConfig(data_dir=tmp_path, address="0.0.0.0:1", token="t", allow_insecure=True).validate()
    ServerConfig(data_dir=tmp_path, address="[::]:1", user_tokens={"a": "b"}, allow_insecure=True).validate()
    ServerConfig(data_dir=tmp_path, address="[::]:1", allow_insecure=True).validate()
    # Loopback traffic does not leave the machine: tokens without TLS are fine there.
    ServerConfig(data_dir=tmp_path, address="[::1]:1", token="t").validate()
    ServerConfig(data_dir=tmp_path, address="127.0.0.1:1", user_tokens={"a": "b"}).validate()
    ServerConfig(data_dir=tmp_path, address="localhost:1").validate()


async def test_frequent_client_pings_on_an_idle_stream_do_not_get_goaway(server: RunningServer) -> None:
    # A client far more eager than ours: pings every 100 ms on an idle stream.
    channel = grpc.aio.insecure_channel(
        server.address,
        options=[
            ("grpc.keepalive_time_ms", 100),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        # No status change is coming: the read must still be pending (not failed) after 2 s of pings.
        pending = asyncio.ensure_future(watch.read())
        done, _ = await asyncio.wait({pending}, timeout=2.0)
        assert not done, f"idle stream ended early: {pending.exception() if done else ''}"
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        pending.cancel()
        watch.cancel()
    finally:
        await channel.close()


def test_the_binding_of_rpcs_is_checked_against_the_contract_at_start_up() -> None:
    from streamcli.server.service import NOT_YET_IMPLEMENTED, BindingError, bind

    assert frozenset() == NOT_YET_IMPLEMENTED  # every RPC is built (Collaborate came last)

    class Files:
        RPCS = ("UploadFile", "UploadFiles", "GetUploadStatus", "DownloadFile", "GetFileInfo", "ListFiles",
                "DeleteFile")  # fmt: skip

        def __getattr__(self, name: str) -> object:
            if name in self.RPCS:
                return lambda request, context: None
            raise AttributeError(name)

    class Rest:
        RPCS = ("PublishEvents", "StreamUserEvents", "SendNotification", "SubscribeToNotifications", "Chat",
                "ListRoomMembers", "StreamRoomMessages")  # fmt: skip

        def __getattr__(self, name: str) -> object:
            if name in self.RPCS:
                return lambda request, context: None
            raise AttributeError(name)

    class Batches(Files):
        RPCS = ("ProcessDataBatch", "ListBatches", "GetBatch", "ReadBatchRecords")

    class Metrics(Files):
        RPCS = ("CollectMetrics", "ListMetricSeries")

    class Processing(Files):
        RPCS = ("ProcessLiveData",)

    class Collab(Files):
        RPCS = ("Collaborate", "ListDocuments", "ResolveIds")

    assert (
        set(bind([Files(), Rest(), Batches(), Metrics(), Processing(), Collab()]))
        == {m.name for m in METHODS} - NOT_YET_IMPLEMENTED
    )

    class Misspelt(Rest):
        RPCS = (*Rest.RPCS[:-1], "ListRoomMember")

    with pytest.raises(BindingError, match="lists 'ListRoomMember', which is not an RPC"):
        bind([Files(), Misspelt(), Batches(), Metrics(), Processing(), Collab()])

    class Missing:
        RPCS = ("Chat",)

    with pytest.raises(BindingError, match=r"Missing\.RPCS lists Chat, but Missing has no method Chat"):
        bind([Missing()])
    with pytest.raises(BindingError, match="no domain serves Chat, ListRoomMembers"):
        bind([Files(), type("Part", (Rest,), {"RPCS": Rest.RPCS[:4]})(), Batches(), Metrics(), Processing(), Collab()])
    with pytest.raises(BindingError, match="listed by two domains"):
        bind([Files(), Rest(), Rest(), Batches(), Metrics(), Processing(), Collab()])
