#!/usr/bin/env python3
"""What a stored turn costs the SQLite writer in WAL frames, for the state layout Staple has and for
layouts it could have.

The SQLite writer's CPU per turn follows the pages its commits write: every dirty page is one WAL
frame (two pwrite calls and a checksum), and a chained /v1/responses turn dirties about three times
the pages of a /v1/chat/completions turn. This script counts those frames without Staple: it makes
a database with Staple's schema (the same tables, indexes, AUTOINCREMENT and auto_vacuum setting),
fills it with `--prefill` turns so that every B-tree has its depth, then commits `--commits`
batches of `--batch` turns (the writer commits what is queued at once; ~20 turns a commit at 64
connections) and reads the frame headers the batches added to the WAL: per turn, and per B-tree.

Rows have the sizes Staple writes for bench/run's rows (ids as NewId makes them, the texts of the
fake upstream's answer, a response object of the chains row).

Layouts:
  v1        /v1/chat/completions: the turn log's two rows (the reference)
  chains    /v1/responses today: the turn log's two rows, the response row (its object with the
            output), its input and output item rows
  no-dup    chains, the response object stored without its output (read back from the items)
  inline    the items of a response that is in no conversation kept in its response row (no item
            rows), the object without its output
  inline-nolog  inline, and no turn log rows for Responses turns

  python3 bench/state_layout.py [--prefill 20000] [--commits 200] [--batch 20]
"""

import argparse
import collections
import os
import sqlite3
import struct
import tempfile
import time

MESSAGES = """
CREATE TABLE messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, timestamp DATETIME NOT NULL,
  role TEXT NOT NULL, content TEXT NOT NULL, request_id TEXT, model TEXT, prompt_tokens INTEGER,
  completion_tokens INTEGER, latency_ms INTEGER, owner TEXT NOT NULL DEFAULT '', upstream TEXT);
CREATE INDEX messages_owner_user_id_id ON messages (owner, user_id, id);
CREATE TABLE responses (
  owner TEXT NOT NULL, id TEXT NOT NULL, conversation_id TEXT, previous_response_id TEXT,
  created_at INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (owner, id));
CREATE TABLE items (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, id TEXT NOT NULL, response_id TEXT,
  output INTEGER NOT NULL DEFAULT 0, conversation_id TEXT, body TEXT NOT NULL);
CREATE INDEX items_owner_response_id_output_seq ON items (owner, response_id, output, seq)
  WHERE response_id IS NOT NULL;
CREATE INDEX items_owner_conversation_id_seq ON items (owner, conversation_id, seq)
  WHERE conversation_id IS NOT NULL;
"""

ANSWER = "Hello! I am a fake upstream answering every request the same way."
PROMPT = "And then? Answer in one sentence."
_last_ms = 0


def new_id(prefix):
    """As NewId: 12 hex digits of Unix milliseconds, then 18 random bytes."""
    global _last_ms
    _last_ms = max(_last_ms, int(time.time() * 1000))
    return "%s_%012x%s" % (prefix, _last_ms, os.urandom(18).hex())


def new_uuid7():
    global _last_ms
    _last_ms = max(_last_ms, int(time.time() * 1000))
    h = "%012x7%s" % (_last_ms, os.urandom(10).hex()[:19])
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:32])


def input_item(item_id, text):
    return ('{"type":"message","id":"%s","status":"completed","role":"user","content":'
            '[{"type":"input_text","text":"%s"}]}' % (item_id, text))


def output_item(item_id, text):
    return ('{"type":"message","id":"%s","status":"completed","role":"assistant","content":'
            '[{"type":"output_text","text":"%s","annotations":[]}]}' % (item_id, text))


def response_object(resp_id, previous, output_json, depth):
    return ('{"id":"%s","object":"response","created_at":1796485800,"status":"completed",'
            '"error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,'
            '"model":"gpt-4o-mini","output":%s,"parallel_tool_calls":true,'
            '"previous_response_id":%s,"conversation":null,"reasoning":{"effort":null,'
            '"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},'
            '"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":'
            '{"input_tokens":12,"input_tokens_details":{"cached_tokens":0},"output_tokens":14,'
            '"output_tokens_details":{"reasoning_tokens":0},"total_tokens":26},"user":null,'
            '"metadata":{"depth":"%d"}}' % (resp_id, output_json,
                                             '"%s"' % previous if previous else "null", depth))


class Turns:
    """Writes one layout's turns; chains of ten, as bench/run's chains row."""

    def __init__(self, db, layout):
        self.db, self.layout = db, layout
        self.previous, self.depth = None, 0

    def log(self, user_id):
        ts = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime())
        request_id = os.urandom(16).hex()
        self.db.execute("INSERT INTO messages (user_id, timestamp, role, content, request_id, model, "
                        "owner) VALUES (?, ?, 'user', ?, ?, 'gpt-4o-mini', '')",
                        (user_id, ts, PROMPT, request_id))
        self.db.execute("INSERT INTO messages (user_id, timestamp, role, content, request_id, model, "
                        "prompt_tokens, completion_tokens, latency_ms, owner) VALUES "
                        "(?, ?, 'assistant', ?, ?, 'gpt-4o-mini', 12, 14, 2, '')",
                        (user_id, ts, ANSWER, request_id))

    def turn(self):
        if self.layout == "v1":
            self.log(new_uuid7())
            return
        resp_id = new_id("resp")
        self.depth = self.depth + 1 if self.previous and self.depth < 10 else 1
        previous = self.previous if self.depth > 1 else None
        in_item = input_item(new_id("msg"), PROMPT)
        out_id = new_id("msg")
        out_item = output_item(out_id, ANSWER)
        if self.layout != "inline-nolog":
            self.log(resp_id)
        output_json = "[%s]" % out_item if self.layout == "chains" else "[]"
        body = response_object(resp_id, previous, output_json, self.depth)
        if self.layout.startswith("inline"):
            # The row keeps the object and its items: {"response":…,"input":[…],"output":[…]}.
            body = '{"response":%s,"input":[%s],"output":[%s]}' % (body, in_item, out_item)
        self.db.execute("INSERT INTO responses (owner, id, conversation_id, previous_response_id, "
                        "created_at, body) VALUES ('', ?, NULL, ?, 1796485800, ?)",
                        (resp_id, previous, body))
        if not self.layout.startswith("inline"):
            for output, item_id, item in ((0, None, in_item), (1, out_id, out_item)):
                self.db.execute("INSERT INTO items (owner, id, response_id, output, "
                                "conversation_id, body) VALUES ('', ?, ?, ?, NULL, ?)",
                                (item_id or new_id("msg"), resp_id, output, item))
        self.previous = resp_id


def wal_frames(path, page_size):
    """(page number of each frame of the current WAL generation, commits)."""
    with open(path, "rb") as f:
        wal = f.read()
    salt = wal[16:24]
    pages, commits, offset = [], 0, 32
    while offset + 24 + page_size <= len(wal):
        page, commit = struct.unpack(">II", wal[offset:offset + 8])
        if wal[offset + 8:offset + 16] != salt:
            break
        pages.append(page)
        commits += commit != 0
        offset += 24 + page_size
    return pages, commits


def measure(layout, args, directory):
    path = os.path.join(directory, layout + ".db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.executescript(MESSAGES)
    turns = Turns(db, layout)
    for _ in range(args.prefill // args.batch):
        db.execute("BEGIN")
        for _ in range(args.batch):
            turns.turn()
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for _ in range(args.commits):
        db.execute("BEGIN IMMEDIATE")
        for _ in range(args.batch):
            turns.turn()
        db.execute("COMMIT")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages, commits = wal_frames(path + "-wal", page_size)
    names = dict(db.execute("SELECT pageno, name FROM dbstat"))
    by_tree = collections.Counter(names.get(p, "(page map or free)") for p in pages)
    payload = db.execute("SELECT sum(payload) FROM dbstat").fetchone()[0]
    rows = args.prefill // args.batch * args.batch + args.commits * args.batch
    db.close()
    return len(pages), commits, by_tree, payload / rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefill", type=int, default=20000, help="turns stored before counting")
    parser.add_argument("--commits", type=int, default=200, help="commits counted")
    parser.add_argument("--batch", type=int, default=20, help="turns per commit")
    parser.add_argument("--layouts", default="v1 chains no-dup inline inline-nolog")
    args = parser.parse_args()
    print("| layout | WAL frames per turn | pwrite per turn | stored bytes per turn | frames per "
          "commit, by B-tree |")
    print("|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as directory:
        for layout in args.layouts.split():
            frames, commits, by_tree, bytes_per_turn = measure(layout, args, directory)
            turns = commits * args.batch
            trees = ", ".join("%s %.1f" % (name, count / commits)
                              for name, count in by_tree.most_common())
            print("| %s | %.2f | %.2f | %.0f | %s |" % (layout, frames / turns, 2 * frames / turns,
                                                        bytes_per_turn, trees))


if __name__ == "__main__":
    main()
