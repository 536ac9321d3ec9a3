"""Validation datasets as declarative metadata (the way mteb describes tasks), and their loaders.

Each spec pins the Hub revision it was written against; that revision is echoed in every report.
Loading order: ``--data-files`` if given, else the Hub (``datasets.load_dataset``), else, when the Hub is
unreachable, the bundled sample shipped with qconv, and the report says so (``source: bundled-sample``).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from qconv.console import console, quiet_libraries
from qconv.errors import QconvError, first_sentence, one_line


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    hub_path: str
    revision: str | None
    split: str
    kind: Literal["pairs", "rerank"]
    columns: tuple[str, ...]
    main_metric: str
    bundled_sample: str
    description: str
    language: str
    # Instruction for instruction-following embedders (e5/Qwen3 style), applied to both sides of a pair.
    instruction: str | None = None
    score_range: tuple[float, float] = (0.0, 5.0)
    reference: str = ""
    # Rerank datasets: the grade from which a passage counts as relevant for MRR and Recall (NDCG takes every
    # grade as its gain), for the Hub split and for the bundled sample, which may come from other qrels.
    relevance_threshold: int = 1
    sample_relevance_threshold: int | None = None
    # Rerank datasets: where each query's candidates come from, for the report (Hub split, bundled sample).
    candidates: str = ""
    sample_candidates: str = ""
    extra: dict = field(default_factory=dict)


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


register(
    DatasetSpec(
        name="sts12",
        hub_path="mteb/sts12-sts",
        revision="a0d554a64d88156834ff5ae9920b964011b16384",
        split="test",
        kind="pairs",
        columns=("sentence1", "sentence2", "score"),
        main_metric="cosine_spearman",
        bundled_sample="sts12_test_sample.jsonl",
        description="SemEval-2012 STS (English)",
        language="en",
        instruction="Retrieve semantically similar text.",
        score_range=(0.0, 5.0),
        reference="https://www.aclweb.org/anthology/S12-1051.pdf",
    )
)
register(
    DatasetSpec(
        name="bq",
        hub_path="C-MTEB/BQ",
        revision="e3dda5e115e487b39ec7e618c0c6a29137052a55",
        split="test",
        kind="pairs",
        columns=("sentence1", "sentence2", "score"),
        main_metric="cosine_spearman",
        bundled_sample="bq_test_sample.jsonl",
        description="BQ bank question similarity (Chinese, C-MTEB)",
        language="zh",
        instruction="Retrieve semantically similar text.",
        score_range=(0.0, 1.0),
        reference="https://aclanthology.org/2021.emnlp-main.357",
    )
)


register(
    DatasetSpec(
        # No verified commit of this dataset was available when this was written: the report says "unpinned".
        name="msmarco",
        hub_path="zyznull/msmarco-passage-ranking",
        revision=None,
        split="dev",
        kind="rerank",
        columns=("query", "positive_passages", "negative_passages"),
        main_metric="mrr@10",
        bundled_sample="msmarco_trecdl1920_rerank.jsonl",
        description="MS MARCO passage reranking (Tevatron layout); bundled: TREC-DL 2019/2020 judged BM25 candidates",
        language="en",
        reference="https://microsoft.github.io/msmarco/",
        # MS MARCO dev qrels are binary (1 = relevant); TREC-DL's NIST grades are 0-3 and its track counts >= 2.
        relevance_threshold=1,
        sample_relevance_threshold=2,
        candidates="the split's positive_passages (MS MARCO dev qrels) then its negative_passages (Tevatron's "
        "BM25 negatives), in the order given",
        sample_candidates="TREC-DL 2019/2020 BM25 top-100 passages judged by NIST: those graded 2-3 then those graded "
        "0 (at most 29, BM25 order); grade-1 and unjudged hits left out",
    )
)


def dataset_spec(name: str, kind: str | None = None) -> DatasetSpec:
    spec = DATASETS.get(name)
    if spec is None or (kind is not None and spec.kind != kind):
        known = ", ".join(n for n, s in DATASETS.items() if kind is None or s.kind == kind)
        raise QconvError(f"unknown dataset '{name}' (known: {known})")
    return spec


@dataclass(frozen=True)
class PairData:
    sentence1: list[str]
    sentence2: list[str]
    scores: list[float]
    source: str  # "hub", "data-files" or "bundled-sample"
    location: str  # Hub path@revision or the file
    split: str
    fingerprint: str  # sha256 of the rows actually evaluated
    full_split: bool  # every row of a Hub split (no --limit, no local file or bundled sample)

    def __len__(self) -> int:
        return len(self.scores)


_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _load_file(path: Path):
    import datasets

    builder = _LOADERS.get(path.suffix.lower())
    if builder is None:
        raise QconvError(f"{path}: unsupported data file type '{path.suffix}' (use JSONL, Parquet or CSV)")
    if not path.is_file():
        raise QconvError(f"data file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    if builder != "parquet":
        require_utf8_text(path)
    quiet_libraries()
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        raise QconvError(f"cannot read {path}: {one_line(exc.__cause__ or exc, 200)}") from exc
    if len(rows) == 0:
        raise QconvError(f"data file {path} has no rows")
    return rows


def require_utf8_text(path: Path, chunk: int = 1 << 20) -> None:
    """JSONL and CSV must be UTF-8 text that holds something: say so, with the offset, before parsing."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, blank = 0, True
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise QconvError(
                    f"data file {path} is not UTF-8 text (byte 0x{block[exc.start]:02x} at offset {offset + exc.start})"
                ) from exc
            blank = blank and not text.strip()
            offset += len(block)
    if blank:
        raise QconvError(f"data file {path} is empty")


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def bundled_sample_path(spec: DatasetSpec) -> Path:
    return Path(str(resources.files("qconv.validate").joinpath("data", spec.bundled_sample)))


def load_rows(spec: DatasetSpec, data_files: str | Path | None, split: str | None, offline: bool):
    """Rows as a ``datasets.Dataset`` plus (source, location, split)."""
    import datasets

    split = split or spec.split
    if data_files:
        path = Path(data_files)
        return _load_file(path), "data-files", str(path), split
    if not offline and not hub_offline():
        quiet_libraries()
        try:
            rows = datasets.load_dataset(spec.hub_path, revision=spec.revision, split=split)
            return rows, "hub", f"{spec.hub_path}@{spec.revision}", split
        except Exception as exc:  # unreachable Hub: fall back to the bundled sample, loudly
            reason = first_sentence(exc)
            console.print(
                f"[yellow]could not load {spec.hub_path} from the Hub ({reason}); using the bundled sample[/]"
            )
    path = bundled_sample_path(spec)
    if split != spec.split:
        raise QconvError(
            f"dataset {spec.name}: split '{split}' is not available here: the bundled sample is the "
            f"'{spec.split}' split (pass --data-files for another split)"
        )
    console.print(
        f"[yellow]dataset {spec.name}: using the bundled sample {path.name} "
        f"(source: bundled-sample), not the full {spec.hub_path} split[/]"
    )
    return _load_file(path), "bundled-sample", f"qconv/validate/data/{path.name}", split


def require_columns(rows, columns: tuple[str, ...], where: str) -> None:
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise QconvError(
            f"{where} lacks column(s) {', '.join(missing)} "
            f"(has: {', '.join(rows.column_names) or 'none'}; expected {', '.join(columns)})"
        )


def first_rows(rows, limit: int | None):
    if limit is None:
        return rows
    if limit < 1:
        raise QconvError(f"--limit must be positive, got {limit}")
    return rows.select(range(min(limit, len(rows))))


def is_full_split(source: str, rows, limited) -> bool:
    """Whether the rows evaluated are a whole Hub split: only then may a result stand for the dataset."""
    return source == "hub" and len(limited) == len(rows)


def fingerprint_rows(rows: list) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


def load_pairs(
    spec: DatasetSpec,
    *,
    data_files: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    offline: bool = False,
) -> PairData:
    all_rows, source, location, split = load_rows(spec, data_files, split, offline)
    require_columns(all_rows, spec.columns, f"dataset {location}")
    rows = first_rows(all_rows, limit)
    s1, s2, scores = list(rows["sentence1"]), list(rows["sentence2"]), list(rows["score"])
    try:
        scores = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise QconvError(f"dataset {location}: column 'score' must be numeric") from None
    if not all(isinstance(t, str) for t in s1 + s2):
        raise QconvError(f"dataset {location}: sentence1/sentence2 must be strings")
    if len(scores) < 2:
        raise QconvError(f"dataset {location} has {len(scores)} pair(s); correlations need at least 2")
    # Degenerate data gives NaN correlations, which would be recorded as a failed validation.
    if len(set(scores)) == 1:
        raise QconvError(f"dataset {location}: every score is {scores[0]:g}, so no correlation is defined")
    if not any(t.strip() for t in s1 + s2):
        raise QconvError(f"dataset {location}: every sentence1/sentence2 text is empty")
    fingerprint = fingerprint_rows([[a, b, c] for a, b, c in zip(s1, s2, scores)])
    return PairData(s1, s2, scores, source, location, split, fingerprint, is_full_split(source, all_rows, rows))


@dataclass(frozen=True)
class RerankQuery:
    query_id: str
    query: str
    documents: list[str]
    doc_ids: list[str]  # the passages' docid, else a hash of the text: ties are broken by it, never by position
    grades: list[int]  # graded relevance: the passage's ``relevance`` if given, else 1 positive / 0 negative

    def relevant(self, threshold: int) -> list[bool]:
        return [g >= threshold for g in self.grades]


@dataclass(frozen=True)
class RerankData:
    queries: list[RerankQuery]
    source: str
    location: str
    split: str
    fingerprint: str
    full_split: bool
    relevance_threshold: int
    graded: bool  # whether the data carried ``relevance`` grades (else they are binary from the lists)
    candidates: str  # how each query's candidates were chosen
    duplicates_dropped: int = 0

    def __len__(self) -> int:
        return len(self.queries)


def _passage_text(passage, where: str) -> str | None:
    """The passage as scored (title, then text); None for a passage without text (null), which is skipped."""
    if passage is None:
        return None
    if not isinstance(passage, dict) or "text" not in passage:
        raise QconvError(f"{where}: passages must be objects with a 'text' field")
    text = passage["text"]
    if text is None:
        return None
    if not isinstance(text, str):
        raise QconvError(f"{where}: a passage's 'text' must be a string, got {type(text).__name__}")
    title = passage.get("title")
    title = title.strip() if isinstance(title, str) else ""
    return f"{title} {text}".strip() if title else text


def _passage_id(passage: dict, text: str) -> str:
    """The passage's docid, else a hash of its text (an id that does not depend on the candidate order)."""
    docid = passage.get("docid")
    if docid is not None and str(docid) != "":
        return str(docid)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _passage_grade(passage: dict, default: int, where: str) -> int:
    grade = passage.get("relevance")
    if grade is None:
        return default
    try:
        return int(grade)
    except (TypeError, ValueError):
        raise QconvError(f"{where}: passage relevance must be an integer grade, got {grade!r}") from None


def load_rerank(
    spec: DatasetSpec,
    *,
    data_files: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    max_candidates: int = 30,
    offline: bool = False,
) -> RerankData:
    """Queries with candidates = positives + negatives, in the order given, capped at ``max_candidates``.

    The order only decides which passages the cap keeps; rankings break ties by document id, never by position.
    A passage listed twice in one query (same docid) is kept once.
    """
    if max_candidates < 1:
        raise QconvError(f"--max-candidates must be positive, got {max_candidates}")
    all_rows, source, location, split = load_rows(spec, data_files, split, offline)
    require_columns(all_rows, spec.columns, f"dataset {location}")
    rows = first_rows(all_rows, limit)
    queries, graded, dropped, skipped = [], False, 0, 0
    for n, row in enumerate(rows):
        query_id = str(row.get("query_id", n))
        where = f"dataset {location}, query {query_id}"
        if not isinstance(row["query"], str):
            shown = "null" if row["query"] is None else repr(row["query"])
            raise QconvError(f"{where}: 'query' must be a string, got {shown}")
        passages = {}  # docid -> (text, grade), first listing wins
        listed = [(p, 1) for p in row["positive_passages"] or []] + [(p, 0) for p in row["negative_passages"] or []]
        for passage, default in listed:
            text = _passage_text(passage, where)
            if text is None:  # a passage without text (null) is skipped, never scored as "None"
                skipped += 1
                continue
            graded = graded or passage.get("relevance") is not None
            doc_id = _passage_id(passage, text)
            if doc_id in passages:
                dropped += 1
                continue
            passages[doc_id] = (text, _passage_grade(passage, default, where))
        kept = list(passages.items())[:max_candidates]
        if not kept:
            raise QconvError(f"{where} has no candidate passages (positive_passages and negative_passages are empty)")
        doc_ids = [d for d, _ in kept]
        queries.append(
            RerankQuery(query_id, str(row["query"]), [t for _, (t, _) in kept], doc_ids, [g for _, (_, g) in kept])
        )
    if not queries:
        raise QconvError(f"dataset {location} has no queries")
    if skipped:
        console.print(f"[yellow]dataset {location}: skipped {skipped} passage(s) without text (null)[/]")
    bundled = source == "bundled-sample"
    threshold = spec.sample_relevance_threshold if bundled and spec.sample_relevance_threshold else None
    threshold = threshold or spec.relevance_threshold
    candidates = (spec.sample_candidates if bundled else spec.candidates) if source != "data-files" else ""
    candidates = candidates or "the file's positive_passages then negative_passages, in the order given"
    fingerprint = fingerprint_rows([[q.query_id, q.query, q.documents, q.doc_ids, q.grades] for q in queries])
    return RerankData(
        queries,
        source,
        location,
        split,
        fingerprint,
        full_split=is_full_split(source, all_rows, rows),
        relevance_threshold=threshold,
        graded=graded,
        candidates=f"{candidates}; first {max_candidates} per query",
        duplicates_dropped=dropped,
    )
