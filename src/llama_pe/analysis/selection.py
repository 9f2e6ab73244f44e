"""Tuning: each group at the value of its sweep that validation loss chooses, the sweep's seed not deciding
within SELECTION_MARGIN."""

from __future__ import annotations

import pandas as pd

from llama_pe.analysis.experiments import CODE, SEED, ReportError, param_columns
from llama_pe.analysis.grouping import group_keys, iter_groups

# ---------------------------------------------------------------------------------------------- tuning

SELECTION_METRIC = "best_val_loss"  # the train stage's, on the validation split: the only metric selection reads


SELECTION_MARGIN = 0.02  # nats of validation loss within which the sweep's seed alone does not decide


def select_by_validation(
    frame: pd.DataFrame, keys: str | list[str], margin: float = SELECTION_MARGIN
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each group, the runs (every seed) at the best value of the swept `keys`; and a table of that choice.

    The rule is fixed before any result is seen, so that later seeds cannot move it: each value of the keys (a
    combination, for several keys) is ranked on its run at the group's first seed (the sweep's); where the two best
    are within `margin` nats, the mean over the first two seeds decides between them, when both have the second
    seed's run (else the first seed's order stands, and the table says that the second seed is missing). Runs at
    other seeds (a main grid at the chosen value) never take part. The choice reads the group keys, `keys` and
    best_val_loss alone, never a test or extrapolation metric: a value picked by the metrics that the report then
    states would report them optimistically.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    swept = [c for c in group_keys(frame) if c != CODE]
    for key in keys:
        if key not in frame.columns:
            raise ReportError(
                f"--select {key}: no such param among the runs; params: {', '.join(param_columns(frame))}"
            )
        if key == SEED:
            raise ReportError(f"--select {SEED}: the seeds are what each mean is taken over, not a setting to tune")
        if key not in swept:
            shown = f"{frame[key].iloc[0]}" if not frame.empty else "none"
            raise ReportError(
                f"--select {key}: not swept, every run has {key}={shown}; select a param that varies among the "
                f"runs: {', '.join(swept) or 'none varies'}"
            )
    others = [c for c in group_keys(frame) if c not in keys]
    visible = frame[[*others, *keys, SEED, SELECTION_METRIC]]  # what the choice may see
    chosen = pd.Series(False, index=frame.index)
    table = []
    for label, group in iter_groups(visible, others):
        values = group[keys].apply(lambda row: ", ".join(map(repr, row)), axis=1)
        first_seed = group[SEED].min()
        second_seed = first_seed + 1
        scores = {}
        for value in dict.fromkeys(values):
            at = group[values == value]
            first = at.loc[at[SEED] == first_seed, SELECTION_METRIC]
            if first.empty:
                raise ReportError(
                    f"--select {','.join(keys)}: {label}, {_shown(keys, at.iloc[0])} has no run at {SEED}="
                    f"{first_seed}, the seed every value is ranked on; run it (llama-pe study --seeds {first_seed})"
                )
            second = at.loc[at[SEED] == second_seed, SELECTION_METRIC]
            scores[value] = (float(first.mean()), float(second.mean()) if not second.empty else None)
        ranked = sorted(scores, key=lambda v: scores[v][0])  # ties: the first value the runs list
        best, decided_by, score, n = ranked[0], f"{SEED}={first_seed}", scores[ranked[0]][0], 1
        if len(ranked) > 1 and scores[ranked[1]][0] - scores[best][0] <= margin:
            pair = ranked[:2]
            if all(scores[v][1] is not None for v in pair):
                means = {v: (scores[v][0] + scores[v][1]) / 2 for v in pair}
                best = min(pair, key=lambda v: means[v])
                decided_by = f"{SEED}={first_seed},{second_seed} (the best two within {margin:g} nats)"
                score, n = means[best], 2
            else:
                decided_by = (
                    f"{SEED}={first_seed}; the best two are within {margin:g} nats, so {SEED}={second_seed} "
                    "should decide: MISSING"
                )
        at_best = group.index[values == best]
        chosen |= frame.index.isin(at_best)
        table.append(
            {
                "group": label,
                **{k: group[k].iloc[0] for k in others},
                "key": ",".join(keys),
                "chosen": group.loc[at_best[0], keys[0]] if len(keys) == 1 else best,
                f"mean_{SELECTION_METRIC}": score,
                "n": n,
                "decided_by": decided_by,
                "candidates": "; ".join(
                    f"{v}: {first:.6g}" + (f", {second:.6g}" if second is not None else "")
                    for v, (first, second) in scores.items()
                ),
            }
        )
    return frame[chosen].reset_index(drop=True), pd.DataFrame(table)


def _shown(keys: list[str], row: pd.Series) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys)
