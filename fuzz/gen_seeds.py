#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/seeds/<target>/ (committed; rerun after changing an
input format in src/fuzzing.rs). Each seed is a well-formed input for its target."""
import os, struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def i32(v):
    return struct.pack(">i", v)


def i16(v):
    return struct.pack(">h", v)


def msg(t, body):
    return t + i32(len(body) + 4) + body


def startup(params, version=196608):
    body = i32(version) + b"".join(k + b"\0" + v + b"\0" for k, v in params) + b"\0"
    return i32(len(body) + 4) + body


SSL = i32(8) + i32(80877103)
GSS = i32(8) + i32(80877104)
CANCEL = i32(16) + i32(80877102) + i32(1234) + i32(5678)
STARTUP = startup([(b"user", b"app"), (b"database", b"appdb"), (b"application_name", b"puma"),
                   (b"options", b"-c search_path=a,b --statement-timeout=5 -cwork_mem=64kB")])
STARTUP_31 = startup([(b"user", b"app"), (b"_pq_.compression", b"on")], 196609)


def parse(name, sql, types=()):
    return msg(b"P", name + b"\0" + sql + b"\0" + i16(len(types)) + b"".join(i32(t) for t in types))


def bind(stmt, portal=b""):
    return msg(b"B", portal + b"\0" + stmt + b"\0" + i16(0) + i16(1) + i32(1) + b"7" + i16(0))


EXECUTE = msg(b"E", b"\0" + i32(0))
SYNC = msg(b"S", b"")
QUERY = msg(b"Q", b"select 1\0")


def describe(kind, name):
    return msg(b"D", kind + name + b"\0")


def close(kind, name):
    return msg(b"C", kind + name + b"\0")


ERROR = msg(b"E", b"SERROR\0VERROR\0C42P01\0Mrelation does not exist\0\0")
READY = msg(b"Z", b"I")

seeds = {
    "startup_packet": {
        "ssl": b"\x00" + SSL,
        "gssenc": b"\x00" + GSS,
        "cancel": b"\x00" + CANCEL,
        "startup": b"\x03" + STARTUP,
        "startup_3_1": b"\x00" + STARTUP_31,
        "ssl_then_startup_split": b"\x00" + SSL + STARTUP,
        "bad_length": b"\x00" + i32(3) + b"xxxx",
    },
    "frame": {
        "extended": b"\x20\x00\x01\x00" + parse(b"s1", b"select $1", [23]) + bind(b"s1") + describe(b"P", b"")
        + EXECUTE + close(b"S", b"s1") + SYNC,
        "query_small_reads": b"\x00\x40\x00\x01" + QUERY + msg(b"X", b""),
        "server_answers": b"\x10\x00\x02\x00" + msg(b"1", b"") + msg(b"2", b"") + msg(b"C", b"SELECT 1\0")
        + msg(b"S", b"TimeZone\0UTC\0") + ERROR + READY,
        "too_long": b"\x00\x03\x00\x00" + msg(b"Q", b"x" * 100),
        "incomplete": b"\x01\x00\x00\x00" + b"Q" + i32(200) + b"select",
    },
    "pre_auth": {
        # flags (auth method, tls, over limit), then chunks: kind byte and data
        "scram_ok": b"\x00" + b"\x01\x00\x00" + b"\x02" + b"\x03",
        "scram_wrong": b"\x00" + b"\x01\x00\x00" + b"\x02" + b"\x04",
        "md5_ok": b"\x01" + b"\x01\x00\x00" + b"\x05",
        "md5_wrong": b"\x01" + b"\x01\x00\x00" + b"\x06",
        "trust": b"\x02" + b"\x01\x00\x00",
        "console_scram": b"\x00" + b"\x01\x01\x00" + b"\x02" + b"\x03",
        "unknown_database": b"\x02" + b"\x01\x02\x00",
        "protocol_3_1_options": b"\x02" + b"\x01\x10" + bytes([len(b"options\0-c a=b\0_pq_.x\0y\0")])
        + b"options\0-c a=b\0_pq_.x\0y\0",
        "ssl_refused_then_trust": b"\x02" + b"\x00\x08" + SSL + b"\x01\x00\x00",
        "ssl_accepted": b"\x06" + b"\x00\x08" + SSL,
        "gss_then_md5": b"\x01" + b"\x00\x08" + GSS + b"\x01\x00\x00" + b"\x05",
        "cancel": b"\x00" + b"\x00\x10" + CANCEL,
        "raw_startup_then_password": b"\x00" + b"\x00" + bytes([len(STARTUP)]) + STARTUP
        + b"\x00\x0c" + msg(b"p", b"n,,n=,r=x\0"),
        "over_limit": b"\x0a" + b"\x01\x00\x00",
    },
}


def post(flags, max_byte, ops):
    return bytes([flags, max_byte]) + b"".join(ops)


def cmsg(t, body):
    return b"\x01" + t + bytes([len(body)]) + body


def smsg(t, body):
    return b"\x03" + t + bytes([len(body)]) + body


def raw_client(b):
    return b"\x00" + bytes([len(b)]) + b


seeds["post_auth"] = {
    "prepared_roundtrip": post(0x03, 0, [
        b"\x05\x00\x01", raw_client(bind(b"s0")), raw_client(EXECUTE), raw_client(SYNC),
        smsg(b"1", b""), smsg(b"2", b""), smsg(b"C", b"SELECT 1\0"), smsg(b"Z", b"I"),
        raw_client(describe(b"S", b"s0")), raw_client(close(b"S", b"s0")), raw_client(SYNC), b"\x04",
        smsg(b"t", i16(0)), smsg(b"n", b""), smsg(b"Z", b"I"),
    ]),
    "evictions": post(0x03, 0, [
        b"\x05\x00\x00", b"\x05\x01\x01", b"\x05\x02\x02", raw_client(bind(b"s0")), raw_client(bind(b"s2")),
        raw_client(SYNC), smsg(b"1", b""), smsg(b"E", b"SERROR\0C0A000\0Mcached plan must not change result type\0\0"),
        smsg(b"Z", b"I"), raw_client(bind(b"s1")), raw_client(SYNC),
    ]),
    "simple_query_session_mode": post(0x00, 0, [
        raw_client(QUERY), smsg(b"T", i16(0)), smsg(b"D", i16(0)), smsg(b"C", b"SELECT 1\0"),
        smsg(b"Z", b"I"), raw_client(msg(b"Q", b"SET search_path = a\0")), smsg(b"C", b"SET\0"),
        smsg(b"S", b"search_path\0a\0"), smsg(b"Z", b"I"), raw_client(msg(b"X", b"")),
    ]),
    "copy_in": post(0x01, 0, [
        raw_client(parse(b"", b"copy t from stdin")), raw_client(bind(b"")), raw_client(EXECUTE),
        raw_client(SYNC), smsg(b"1", b""), smsg(b"2", b""), smsg(b"G", b"\0\0\0"),
        raw_client(msg(b"d", b"1\n")), raw_client(msg(b"c", b"")), raw_client(SYNC),
        smsg(b"C", b"COPY 1\0"), smsg(b"Z", b"I"),
    ]),
    "deallocate_discard": post(0x03, 0, [
        b"\x05\x03\x03", raw_client(SYNC), raw_client(msg(b"Q", b"DEALLOCATE s3\0")),
        raw_client(msg(b"Q", b"deallocate all;\0")), raw_client(msg(b"Q", b"DISCARD ALL\0")),
        smsg(b"C", b"DISCARD ALL\0"), smsg(b"Z", b"I"),
    ]),
    # Regression (relay emit_local): a Close answered by the proxy while a NoticeResponse is
    # half forwarded; its CloseComplete must not land inside the notice.
    "local_answer_mid_notice": post(0x03, 0, [
        raw_client(parse(b"s0", b"select 0")), b"\x02" + bytes([5]) + msg(b"1", b""),
        b"\x02" + bytes([13]) + b"N" + i32(100) + b"SNOTICE\0", raw_client(close(b"S", b"s0")),
        b"\x02" + bytes([88]) + b"\0" * 88, smsg(b"Z", b"I"),
    ]),
    "duplicate_name_error": post(0x03, 0x10, [
        b"\x05\x00\x00", b"\x05\x00\x01", raw_client(bind(b"s0")), raw_client(SYNC),
        smsg(b"1", b""), smsg(b"Z", b"I"), cmsg(b"F", b"\0\0\0\x01"), cmsg(b"?", b""),
    ]),
}

for target, files in seeds.items():
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
print("seeds written under", ROOT)
