"""Shared fixtures: offline mode, the real PostgreSQL URL, an S3-compatible server, and a tiny study config for
end-to-end runs."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _database_url(variable: str) -> str:
    """A real database of the test machine named by ``variable``; CI always sets it, so these tests run there."""
    url = os.environ.get(variable)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{variable} must be set in CI")
        pytest.skip(f"{variable} is not set")
    return url


@pytest.fixture
def pg_url() -> str:
    """The real PostgreSQL (``HPO_TEST_PG_URL``)."""
    return _database_url("HPO_TEST_PG_URL")


@pytest.fixture
def mysql_url() -> str:
    """The real MariaDB (``HPO_TEST_MYSQL_URL``)."""
    return _database_url("HPO_TEST_MYSQL_URL")


TINY_BERT = "tiny-bert-v1"


def tiny_bert() -> str:
    """A real BERT of MiniLM-L6's family and tokenizer cut to 4 layers of width 64 (4 heads), randomly initialised
    with seed 0 and saved once per machine (under the temporary folder, published by an atomic rename, so parallel
    test processes share it). It runs every code path of the MiniLM teacher (layer cuts, width pruning, hidden and
    attention terms, latency, export) about 20 times cheaper: for tests of the service, not of model quality, which
    keep MiniLM itself."""
    import tempfile
    from pathlib import Path

    final = Path(tempfile.gettempdir()) / "distill-hpo-test-models" / TINY_BERT
    if not (final / "config.json").is_file():
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from objectives.students import resolve_model

        source = resolve_model("minilm-l6")
        config = AutoConfig.from_pretrained(source)
        config.update({"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128})
        torch.manual_seed(0)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{TINY_BERT}-", dir=final.parent))
        AutoModel.from_config(config).save_pretrained(staging)
        AutoTokenizer.from_pretrained(source).save_pretrained(staging)
        try:
            os.rename(staging, final)
        except OSError:  # another test process published it first
            import shutil

            shutil.rmtree(staging)
    return str(final)


def tiny_config(name: str, **overrides: object) -> dict:
    """A study that trains a real tiny BERT (:func:`tiny_bert`) for a handful of steps on a small slice of
    rt-snippets."""
    config = {
        "name": name,
        "objective": "distill",
        "n_trials": 2,
        "seed": 0,
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "data": {"name": "rt-snippets", "max_train_rows": 96, "max_val_rows": 48, "max_length": 32},
        "teacher": {"model": tiny_bert(), "train": {"max_steps": 4, "batch_size": 16, "eval_every": 4}},
        "student": {"num_layers": 2},
        "train": {"max_steps": 4, "batch_size": 16, "eval_every": 2},
        "search_space": {
            "distill.temperature": {"type": "float", "low": 1.0, "high": 4.0},
            "student.num_layers": {"type": "int", "low": 1, "high": 2},
        },
    }
    config.update(overrides)
    return config


def sentiment_csv(path: os.PathLike[str], rows: int = 240) -> str:
    """A local CSV (columns ``text``, ``label``) of ``rows`` distinct short reviews, half ``positive`` and half
    ``negative`` by their adjectives: a labelled set whose full splits a test can train and evaluate in seconds."""
    from pathlib import Path

    words = {
        "positive": ["gorgeous", "moving", "witty", "tender", "brilliant", "warm"],
        "negative": ["dull", "clumsy", "tedious", "shallow", "bland", "messy"],
    }
    nouns = ["film", "story", "script", "cast", "ending", "score", "comedy", "drama"]
    lines = ["text,label"]
    for i in range(rows):
        label = "positive" if i % 2 else "negative"
        adjectives = words[label]
        lines.append(f"a {adjectives[i % 6]} and {adjectives[(i // 6) % 6]} {nouns[i % 8]}, number {i},{label}")
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


TINY_TEXT = [
    "The river runs through the old town and past the mill.",
    "A band from the city played three songs at the festival.",
    "The species is found in warm forests near the coast.",
    "In the winter the roads to the village are closed by snow.",
    "The museum holds paintings, maps and letters of the founders.",
    "Trains leave the station every hour for the capital.",
]


def write_corpus(path: os.PathLike[str], documents: int = 60, seed: int = 0) -> str:
    """A local ``.txt`` corpus: ``documents`` short documents (shuffled sentences of :data:`TINY_TEXT`) separated by
    blank lines, as ``data.name`` of a causal-LM study reads it."""
    import random
    from pathlib import Path

    rng = random.Random(seed)
    docs = [" ".join(rng.sample(TINY_TEXT, 3)) for _ in range(documents)]
    Path(path).write_text("\n\n".join(docs) + "\n")
    return str(path)


def tiny_decoder(family: str, **overrides: object):
    """A randomly initialised 4-layer causal LM of ``family``, built from a config (no download); ``overrides`` set
    config keys. The Llama is GQA: 4 query heads read 2 key/value heads."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig, Qwen2Config

    configs = {
        "llama": lambda: LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,
        ),
        "gpt2": lambda: GPT2Config(vocab_size=128, n_layer=4, n_embd=32, n_head=4, n_positions=64),
        "gpt_neox": lambda: GPTNeoXConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=64,
        ),
        "qwen2": lambda: Qwen2Config(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
            use_sliding_window=True,
            sliding_window=8,
        ),
        "opt": lambda: OPTConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        ),
    }
    config = configs[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding :func:`tiny_decoder`'s Llama (4 layers, 32 wide, GQA, tied embeddings) and a word-level
    tokenizer of :data:`TINY_TEXT`, saved as a Hugging Face model: a teacher that loads in a second."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-lm")
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(TINY_TEXT, trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    tokenizer.save_pretrained(out)
    llama = {"vocab_size": len(tokenizer), "max_position_embeddings": 256}
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    tiny_decoder("llama", **llama, **ids).save_pretrained(out)
    return str(out)


class PostgresCluster:
    """A PostgreSQL cluster of this test alone (Debian's ``initdb`` and ``pg_ctl``, run as the ``postgres`` user when
    the tests run as root), listening on 127.0.0.1 at a free port with trust authentication: a test may stop and
    restart it, or give it a low ``max_connections``, without touching the shared server other tests use."""

    def __init__(self, root: os.PathLike[str], **settings: object) -> None:
        import glob
        import pwd
        import shutil
        import socket

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.skip("needs PostgreSQL's server binaries (Debian's postgresql package)")
        self.bin = os.path.dirname(found[-1])
        self.root = os.fspath(root)
        self.data = os.path.join(self.root, "data")
        os.makedirs(self.root, exist_ok=True)
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.user is not None:
            shutil.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        options = {"listen_addresses": "'127.0.0.1'", "port": self.port, "unix_socket_directories": f"'{self.root}'"}
        options.update({key: str(value) for key, value in settings.items()})
        self._pg("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in options.items())
        self.start()

    def _pg(self, program: str, *args: str) -> None:
        import subprocess

        def demote() -> None:
            if self.user is not None:
                os.setgid(self.user.pw_gid)
                os.setuid(self.user.pw_uid)

        subprocess.run(
            [os.path.join(self.bin, program), *args], check=True, capture_output=True, timeout=120, preexec_fn=demote
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "log"), "-w", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def private_cluster(**settings: object) -> Iterator[PostgresCluster]:
    """A :class:`PostgresCluster` with ``settings`` (e.g. ``max_connections=40``), stopped and removed on leaving.
    Its folder is made under /tmp, not pytest's root-only temporary folder, so the ``postgres`` user can reach it."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="hpo-pg-")
    try:
        cluster = PostgresCluster(root, **settings)
        try:
            yield cluster
        finally:
            with contextlib.suppress(Exception):
                cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def pgbouncer(database: str, port: int, pool_size: int = 2) -> Iterator[str]:
    """PgBouncer in transaction pooling mode on 127.0.0.1 (a free port) in front of ``database`` on the PostgreSQL at
    127.0.0.1:``port``, with ``pool_size`` server connections for all its clients; yields the URL of the database
    through it. Run as the ``postgres`` user (PgBouncer refuses root), stopped on leaving."""
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile
    import time

    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        pytest.skip("needs pgbouncer (apt-get install pgbouncer)")
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    root = tempfile.mkdtemp(prefix="hpo-pgbouncer-")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen = probe.getsockname()[1]
    users = os.path.join(root, "users.txt")
    with open(users, "w") as f:
        f.write('"postgres" ""\n')
    ini = os.path.join(root, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(
            f"[databases]\n{database} = host=127.0.0.1 port={port} dbname={database}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\npool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 200\nlogfile = {root}/log\n"
        )
    if user is not None:
        for path in (root, users, ini):
            shutil.chown(path, user.pw_uid, user.pw_gid)

    def demote() -> None:
        if user is not None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    proc = subprocess.Popen([binary, ini], preexec_fn=demote, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", listen)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{listen}/{database}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PostgresCluster]:
    """A :func:`private_cluster` with default settings, for one test."""
    with private_cluster() as cluster:
        yield cluster


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""Dummy credentials moto accepts (not secrets), set in the environment of the tests that use :func:`s3_bucket`."""


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in server mode on 127.0.0.1 at a free port, started once per test run as s3fs's own tests
    start theirs; yields its endpoint URL. Other processes (worker nodes) reach it over HTTP like any S3 service."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in a failing test's output
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on :func:`s3_endpoint`, with :data:`S3_ENV` in this test's environment (inherited by the
    processes it starts) and no AWS profile or config file of the machine; returns ``s3://BUCKET``."""
    import uuid

    import s3fs

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    bucket = f"hpo-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}"


@pytest.fixture(autouse=True)
def _sigint_default() -> Iterator[None]:
    """Every test starts with Python's own SIGINT handler. A test process that somewhere (a library, a module-scoped
    fixture) left SIGINT ignored would hand that to every ``hpo`` process later tests start, and those would then
    ignore the Ctrl-C the dashboard and ``status --watch`` tests send (seen in full xdist runs only)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        if os.environ.get("HPO_SIGINT_LOG"):
            with open(os.environ["HPO_SIGINT_LOG"], "a") as fh:
                fh.write(f"{os.environ.get('PYTEST_CURRENT_TEST')}: {signal.getsignal(signal.SIGINT)}\n")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


def word_tokenizer(texts: list[str], **special: str):
    """A lowercasing word-level fast tokenizer trained on ``texts``; ``special`` names its special tokens
    (``unk_token`` required, e.g. ``pad_token``, ``eos_token``), added to the vocabulary in that order."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(unk_token=special["unk_token"]))
    words.normalizer = normalizers.Lowercase()
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(special.values())))
    return PreTrainedTokenizerFast(tokenizer_object=words, **special)


def tiny_llama_base(out: os.PathLike[str], texts: list[str]) -> str:
    """A directory holding a randomly initialised 2-layer Llama causal LM (as a hub decoder checkpoint is saved)
    with a word-level tokenizer of ``texts`` that has an EOS token but no pad token, and a config without a pad
    token id: a decoder base model a classification study can fine-tune as its teacher in seconds."""
    from pathlib import Path

    tokenizer = word_tokenizer(texts, unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(out)
    llama = {"vocab_size": len(tokenizer), "max_position_embeddings": 256, "num_hidden_layers": 2}
    tiny_decoder("llama", **llama, eos_token_id=tokenizer.eos_token_id, pad_token_id=None).save_pretrained(out)
    return str(Path(out))


def tiny_distilbert(texts: list[str], out: Path) -> str:
    """A 2-layer DistilBERT classifier with its own word-level tokenizer of ``texts``, saved to ``out``."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = word_tokenizer(texts, pad_token="[PAD]", unk_token="[UNK]")  # [PAD] is id 0, the config's pad
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, hidden_dim=64, n_layers=2, n_heads=2, pad_token_id=0)
    DistilBertForSequenceClassification(config).save_pretrained(out)
    return str(out)
