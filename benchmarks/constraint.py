"""Per-token cost of schema-constrained decoding (xgrammar + the closing order).

    python benchmarks/constraint.py [--model DIR | --model-size tiny|1b|2b|8b] [--device auto|cpu|cuda]
                                    [--schema invoice] [--pages 4] [--max-new-tokens 400] [--repeats 3]
                                    [--vocab 151674] [--mask-steps 300] [--threads N]

Part 1, end to end: the same model, the same pages, the same ``extract`` prompt,
greedy decoding with the repetition guard off, once free (``constrained_decoding``
off) and once constrained (the schema grammar, closing when the budget runs low).
Each path is warmed up once, then timed ``--repeats`` times alternately; the median
is reported as milliseconds per generated token and the ratio constrained / free.
Also reported: how many outputs parse and validate against the schema. The default
model is the tiny random InternVL (built in a temp dir, loaded through
``InternVLEngine.load()``); ``--model DIR`` loads a real checkpoint, ``--model-size``
builds random weights of InternVL3's real size on ``--device`` (GPU runs).

Part 2, the mask at a real vocabulary size: the tiny tokenizer has 262 tokens,
InternVL3 (Qwen2.5) has 151,674, and the bitmask cost grows with it. A synthetic
vocabulary of ``--vocab`` tokens (every single byte, JSON punctuation runs, words
and numbers) is compiled with the same schema, and a batch of ``--pages`` rows is
decoded ``--mask-steps`` steps on random logits (greedy), with and without the
grammar processor: the difference is the constraint's cost per decoding step.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # docproc / workers from this checkout

from benchmarks.inference import build_engine, make_pages, sync  # noqa: E402
from docproc.base.settings import Settings  # noqa: E402
from docproc.jobs.schemas import get_registry  # noqa: E402
from workers.engines.internvl import InternVLEngine  # noqa: E402
from workers.engines.json_constraint import (  # noqa: E402
    Closer,
    GrammarLogitsProcessor,
    SchemaGrammar,
)
from workers.engines.schema_bounds import closing_reserve, grammar_schema  # noqa: E402

# --- part 1: end to end ---------------------------------------------------------------------


def load_engine(args: argparse.Namespace, workdir: Path) -> InternVLEngine:
    if args.model:
        settings = Settings(_env_file=None, model=args.model, device=args.device, dtype=args.dtype,
                            repetition_guard_span=0, text_layer_hint=False)
        return InternVLEngine(settings).load()
    ns = argparse.Namespace(model_size=args.model_size, device=args.device, dtype=args.dtype,
                            batch_size=max(8, args.pages), tile_budget=64, max_tiles=args.max_tiles,
                            max_new_tokens=args.max_new_tokens, seed=0)
    return build_engine(ns, workdir)[0]


def run(engine: InternVLEngine, pages, schema, budget: int) -> tuple[float, int, int]:
    """(seconds, tokens generated, outputs valid under the schema) for one batched extract."""
    requests = [engine.request_for_page(p, "extract", schema) for p in pages]
    for r in requests:
        r.max_new_tokens = budget
    sync(str(engine.device))
    started = time.perf_counter()
    outs = engine.generate_outputs(requests, retry_degenerate=False)
    sync(str(engine.device))
    seconds = time.perf_counter() - started
    valid = 0
    for out in outs:
        try:
            valid += not list(schema.validator.iter_errors(json.loads(out.text)))
        except ValueError:
            pass
    return seconds, sum(len(o.token_ids) for o in outs), valid


def end_to_end(args: argparse.Namespace) -> None:
    schema = get_registry().get(args.schema)
    with tempfile.TemporaryDirectory() as tmp:
        base = load_engine(args, Path(tmp))
        engines = {
            mode: InternVLEngine.from_model(base.model, base.tokenizer, base.settings.model_copy(
                update={"constrained_decoding": mode == "constrained", "repetition_guard_span": 0}),
                model_id=base.model_id)
            for mode in ("free", "constrained")
        }
        pages = make_pages(args.pages)
        runs: dict[str, list[tuple[float, int, int]]] = {m: [] for m in engines}
        for mode, engine in engines.items():  # warm-up (grammar compile, allocator)
            run(engine, pages, schema, args.max_new_tokens)
        for _ in range(args.repeats):
            for mode, engine in engines.items():
                runs[mode].append(run(engine, pages, schema, args.max_new_tokens))
    print(f"part 1: {base.model_id} on {base.device} ({str(base.dtype).removeprefix('torch.')}), "
          f"{len(pages)} pages batched, extract {schema.key}, budget {args.max_new_tokens} tokens/page "
          f"(closing reserve {closing_reserve(grammar_schema(schema.model_schema()))}), "
          f"median of {args.repeats}")
    ms = {}
    for mode, results in runs.items():
        seconds, tokens, valid = sorted(results, key=lambda r: r[0] / max(1, r[1]))[len(results) // 2]
        ms[mode] = 1000.0 * seconds / max(1, tokens)
        print(f"  {mode:<12} {ms[mode]:8.3f} ms/token  ({tokens} tokens in {seconds:.2f} s; "
              f"{valid}/{len(pages)} outputs schema-valid)")
    print(f"  constrained / free: {ms['constrained'] / ms['free']:.2f}x "
          f"(+{ms['constrained'] - ms['free']:.3f} ms per generated token)")


# --- part 2: the mask at a real vocabulary size ------------------------------------------------


def synthetic_vocab(size: int, seed: int = 0) -> list[bytes]:
    """``size`` distinct tokens: the 256 bytes, JSON punctuation runs, then words and numbers."""
    rng = random.Random(seed)
    vocab = [bytes([b]) for b in range(256)]
    seen = set(vocab)
    for run in ('":', '",', '":"', '":{', '":[', '},"', '"}', "}]", '":null', ',"', "null", "true", "false"):
        if run.encode() not in seen:
            seen.add(run.encode())
            vocab.append(run.encode())
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    while len(vocab) < size:
        kind = rng.random()
        if kind < 0.7:
            word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
            word = (" " + word) if rng.random() < 0.5 else word
        elif kind < 0.85:
            word = str(rng.randint(0, 99999))
        else:
            word = "".join(rng.choice(letters + "0123456789.,-:/'\" ") for _ in range(rng.randint(2, 6)))
        token = word.encode()
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    return vocab


def mask_cost(args: argparse.Namespace) -> None:
    import xgrammar as xgr

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    vocab = synthetic_vocab(args.vocab)
    stop = len(vocab)
    vocab.append(b"")  # the stop token
    info = xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.RAW, vocab_size=len(vocab), stop_token_ids=[stop])
    compiler = xgr.GrammarCompiler(info)
    schema = get_registry().get(args.schema)
    variant = grammar_schema(schema.model_schema())
    started = time.perf_counter()
    grammar = compiler.compile_json_schema(json.dumps(variant), any_whitespace=False, separators=(",", ":"))
    compile_ms = (time.perf_counter() - started) * 1000.0
    closer = Closer(info.decoded_vocab, len(vocab), [stop])
    compiled = SchemaGrammar(grammar, closing_reserve(variant))
    rows, steps = args.pages, args.mask_steps
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(rows, len(vocab), generator=gen).to(device) for _ in range(8)]

    def decode(mode: str) -> tuple[float, int]:
        """free: argmax only; grammar: masked (random logits keep it inside strings); closing: the
        closing order from the first step (the JSON completes)."""
        close_at = 0 if mode == "closing" else None
        processor = GrammarLogitsProcessor(xgr, [compiled.grammar] * rows, len(vocab), closer=closer,
                                           close_at=[close_at] * rows) if mode != "free" else None
        ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        sync(device)
        t0 = time.perf_counter()
        n = 0
        for step in range(steps):
            scores = logits[step % len(logits)].clone()
            if processor is not None:
                scores = processor(ids, scores)
            nxt = scores.argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            n += 1
            if processor is not None and all(m is None or m.is_terminated() for m in processor.matchers):
                break
        sync(device)
        return (time.perf_counter() - t0) * 1000.0, n

    for mode in ("free", "grammar", "closing"):  # warm-up
        decode(mode)
    per_step = {}
    for mode in ("free", "grammar", "closing"):
        timed = [decode(mode) for _ in range(args.repeats)]
        per_step[mode] = statistics.median(ms / n for ms, n in timed)
        if mode == "closing":
            closing_steps = timed[0][1]
    free = per_step["free"]
    print(f"part 2: mask cost at vocab {len(vocab):,} on {device}, batch {rows}, schema {schema.key} "
          f"(compile {compile_ms:.0f} ms, closing reserve {compiled.reserve}, median of {args.repeats})")
    print(f"  free step     {free:8.3f} ms  (argmax over random logits)")
    for mode, what in (("grammar", "accept, bitmask fill, apply"),
                       ("closing", f"accept, bitmask fill, closing order; {closing_steps} steps to complete JSON")):
        extra = per_step[mode] - free
        print(f"  {mode:<13} {per_step[mode]:8.3f} ms  ({what}): +{extra:.3f} ms per step = "
              f"+{extra / rows:.3f} ms per token")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a local InternVL checkpoint (default: the tiny random one)")
    parser.add_argument("--model-size", choices=["tiny", "1b", "2b", "8b"], default="tiny")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--schema", default="invoice@1",
                        help="the README's numbers are for invoice@1 (its closing reserve fits the default budget)")
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--max-tiles", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=151_674, help="part 2's vocabulary size (0: skip part 2)")
    parser.add_argument("--mask-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    end_to_end(args)
    if args.vocab:
        mask_cost(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
