"""Pipelines whose layers pass tuples: items are ((input_ids, attention_mask), label) pairs, and
every layer of ``layers()`` takes one tuple and returns one (the last, the logits), which is
what DeepSpeed's ``PipelineModule`` passes between stages."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_task import DICT_MODEL
from torch import nn

from autotune._batch import batch_items, cast_batch, forward, has_float_inputs, model_inputs
from autotune._errors import UserError
from autotune._machine import detect_machine
from autotune._memory import measure_footprint, tensor_bytes
from autotune._plan import TrialConfig
from autotune._task import load_model_file, load_task, reference_settings
from autotune.pipeline import LayerProfile, LinkCost, profiled_partition, stage_cost_vectors
from autotune.runner import RunResult, WarmWorkers, measure_layers, run_trial

# A classifier of padded integer sequences: the embedding turns (ids, mask) into (hidden, mask),
# residual blocks keep the mask beside the hidden states, the head pools over the mask.
TUPLE_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    BATCH_SIZE = 16
    VOCAB = 32
    LENGTH = 12
    WIDTH = 16


    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, WIDTH, padding_idx=0)

        def forward(self, inputs):
            ids, mask = inputs
            return self.embed(ids), mask


    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(WIDTH, WIDTH)

        def forward(self, inputs):
            hidden, mask = inputs
            return hidden + torch.relu(self.linear(hidden)), mask


    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(WIDTH, 2)

        def forward(self, inputs):
            hidden, mask = inputs
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
            return self.linear(pooled)


    def layers():
        return [Embed(), Block(), Block(), Head()]


    def model():
        return nn.Sequential(*layers())


    class Sequences(Dataset):
        # Label: whether the mean token id is above the vocabulary's middle.
        def __init__(self, count, seed):
            g = torch.Generator().manual_seed(seed)
            self.items = []
            for _ in range(count):
                length = int(torch.randint(3, LENGTH + 1, (1,), generator=g))
                ids = torch.zeros(LENGTH, dtype=torch.long)
                ids[:length] = torch.randint(1, VOCAB, (length,), generator=g)
                label = torch.tensor(int(ids[:length].float().mean() > VOCAB / 2))
                self.items.append(((ids, (ids > 0).long()), label))

        def __len__(self):
            return len(self.items)

        def __getitem__(self, index):
            return self.items[index]


    def train_data():
        return Sequences(640, 0)


    def eval_data():
        return Sequences(128, 1)
    """
)
# The same, with items of their own length and a collate() that pads each batch to its longest:
# every micro-batch sends activations of another shape between the stages.
PADDED_TUPLE_MODEL = TUPLE_MODEL.replace(
    """
            ids = torch.zeros(LENGTH, dtype=torch.long)
            ids[:length] = torch.randint(1, VOCAB, (length,), generator=g)
            label = torch.tensor(int(ids[:length].float().mean() > VOCAB / 2))
""",
    """
            ids = torch.randint(1, VOCAB, (length,), generator=g)
            label = torch.tensor(int(ids.float().mean() > VOCAB / 2))
""",
) + textwrap.dedent(
    """

    def collate(items):
        longest = max(len(ids) for (ids, _), _ in items)
        ids = torch.zeros(len(items), longest, dtype=torch.long)
        for row, ((item_ids, _), _) in enumerate(items):
            ids[row, : len(item_ids)] = item_ids
        labels = torch.stack([label for _, label in items])
        return (ids, (ids > 0).long()), labels
    """
)
LINK = LinkCost(sizes=(0, 1_000_000), seconds=(1e-3, 2e-3), backend="gloo")  # 1 ms + 1 ns/B
SAMPLES = 256


@pytest.fixture(scope="module")
def tuple_model(write_model: Callable[[str, str], Path]) -> Path:
    return write_model(TUPLE_MODEL, "tuples.py")


def test_tuple_inputs_and_layers_pass_the_preflight(tuple_model: Path) -> None:
    task = load_task(tuple_model)
    assert task.layer_types == ("Embed", "Block", "Block", "Head")
    assert not task.dict_items and not task.float_inputs


def test_a_tuple_input_is_cast_tensor_by_tensor_and_stays_a_tuple() -> None:
    ids, mask, scale = torch.tensor([[3, 4]]), torch.tensor([[1, 0]]), torch.randn(1, 2)
    # torch's default_collate turns the tuple of each item into a list.
    batch = [[ids, mask, scale], torch.tensor([1])]
    assert model_inputs(batch) == (ids, mask, scale)
    (cast_ids, cast_mask, cast_scale), target = cast_batch(batch, torch.bfloat16, "cpu")
    assert cast_ids.dtype == torch.long and cast_mask.dtype == torch.long
    assert cast_scale.dtype == torch.bfloat16 and target.dtype == torch.long
    assert has_float_inputs(batch) and not has_float_inputs(((ids, mask), target))
    assert batch_items(((torch.zeros(5, 2), mask), target)) == 5


def test_a_tuple_input_reaches_the_model_as_one_argument(tuple_model: Path) -> None:
    model_file = load_model_file(tuple_model)
    seen: list[tuple[torch.Tensor, ...]] = []
    model = nn.Sequential(*model_file.layers())  # type: ignore[misc]
    model[0].register_forward_pre_hook(lambda module, args: seen.append(args))
    batch = model_file.collate([model_file.datasets()[0][i] for i in range(3)])
    output, target = forward(model, batch)
    assert output.shape == (3, 2) and target.shape == (3,)
    (argument,) = seen[0]  # one argument: the (ids, mask) tuple
    assert isinstance(argument, tuple) and len(argument) == 2


def test_a_tuple_s_size_is_the_sum_of_its_tensors(tuple_model: Path) -> None:
    hidden, mask = torch.zeros(4, 12, 16), torch.zeros(4, 12, dtype=torch.long)
    assert tensor_bytes((hidden, mask)) == 4 * 12 * 16 * 4 + 4 * 12 * 8
    assert measure_footprint(load_model_file(tuple_model)).activation_bytes_per_sample > 0


def test_the_profile_sends_each_tensor_and_returns_only_floating_gradients(
    tuple_model: Path,
) -> None:
    profile = measure_layers(
        load_model_file(tuple_model), 8, "bf16", torch.device("cpu"), LINK, "cpu, test"
    )
    hidden, mask = 8 * 12 * 16 * 2, 8 * 12 * 8  # bf16 hidden states, int64 mask
    assert profile.activation_bytes == (hidden + mask,) * 3 + (8 * 2 * 2,)
    assert profile.sent_bytes == ((hidden, mask),) * 3 + ((8 * 2 * 2,),)
    assert profile.returned_bytes == ((hidden,),) * 3 + ((8 * 2 * 2,),)
    assert all(seconds > 0 for seconds in profile.forward_backward_seconds)
    config = TrialConfig.from_settings(
        {
            **reference_settings(8),
            "processes": 2,
            "pipeline_stages": 2,
            "partition_method": "profile",
            "precision": "bf16",
        },
        {"type": "AdamW", "params": {"lr": 1e-3}},
        8,
        "none",
    )
    costs = stage_cost_vectors(profile, config)
    # Two messages forward (hidden states, mask), one gradient back (the hidden states').
    assert costs.send_seconds[0] == pytest.approx(3e-3 + (2 * hidden + mask) * 1e-9)
    assert LayerProfile.from_json(profile.to_json()) == profile


EMBED_RETURNS = "return self.embed(ids), mask"
BLOCK_RETURNS = "return hidden + torch.relu(self.linear(hidden)), mask"


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            [(EMBED_RETURNS, "return self.embed(ids), mask.float()")],
            r"layer 0 \(Embed\).*item 1 of its output\) that does not require grad",
        ),
        (
            [
                (EMBED_RETURNS, "return self.embed(ids), mask, self.embed(ids)"),
                (
                    "hidden, mask = inputs\n        return hidden",
                    "hidden, mask = inputs[:2]\n        return hidden",
                ),
            ],
            r"layer 0 \(Embed\).*item 2 of its output\) that gets no gradient",
        ),
        (
            [(BLOCK_RETURNS, f"return list(({BLOCK_RETURNS[len('return ') :]}))")],
            r"layer 1 \(Block\) of layers\(\) returns a list.*return a tuple",
        ),
    ],
    ids=["a float mask", "an unused activation", "a list"],
)
def test_outputs_a_pipeline_cannot_pass_are_refused(
    write_model: Callable[[str, str], Path], edits: list[tuple[str, str]], message: str
) -> None:
    text = TUPLE_MODEL
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    with pytest.raises(UserError, match=message):
        load_task(write_model(text, "bad.py"))


def test_dict_items_with_layers_are_told_to_give_a_tuple_input(
    write_model: Callable[[str, str], Path],
) -> None:
    text = DICT_MODEL + "\n\ndef layers():\n    return [Classifier()]\n"
    with pytest.raises(UserError, match=r"these items are dicts; give \(input, target\) pairs"):
        load_task(write_model(text, "dict_layers.py"))


@pytest.fixture(scope="module")
def pipeline_runs(
    tuple_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, RunResult]:
    """Two-stage pipelines of the tuple model: fp32 split by DeepSpeed's ``uniform``, bf16 on
    the boundaries of its measured profile; and the padded model (a shape per batch) in fp32."""
    model_file = load_model_file(tuple_model)
    root = tmp_path_factory.mktemp("pipeline_tuples")
    machine = detect_machine()
    results = {}
    padded = tuple_model.with_name("padded_tuples.py")
    padded.write_text(PADDED_TUPLE_MODEL)
    runs = {
        "fp32": ("fp32", "uniform", tuple_model),
        "bf16": ("bf16", "profile", tuple_model),
        "padded": ("fp32", "uniform", padded),
    }
    with WarmWorkers(root / "workers") as workers:
        for name, (precision, method, path) in runs.items():
            settings = {
                **reference_settings(model_file.batch_size),
                "processes": 2,
                "pipeline_stages": 2,
                "partition_method": method,
                "precision": precision,
                "micro_batch_size": 8,
                "gradient_accumulation_steps": 2,
            }
            config = TrialConfig.from_settings(
                settings, model_file.optimizer, model_file.batch_size, "sqrt"
            )
            bounds = None
            if method == "profile":
                profile = measure_layers(model_file, 8, precision, torch.device("cpu"), LINK, "t")
                bounds = list(profiled_partition(profile, config, None).bounds)
            results[name] = run_trial(
                config,
                machine,
                path,
                SAMPLES,
                [0],
                root / name,
                180,
                partition_bounds=bounds,
                workers=workers,
            )
    return results


@pytest.mark.e2e
@pytest.mark.parametrize("precision", ["fp32", "bf16", "padded"])
def test_two_stage_pipelines_pass_tuples_between_stages(
    pipeline_runs: dict[str, RunResult], precision: str
) -> None:
    result = pipeline_runs[precision]
    assert result.ok, result.failure_reason
    measured = result.measurements
    assert measured is not None
    assert math.isfinite(measured["metric"]) and 0 <= measured["metric"] <= 1
    assert math.isfinite(measured["train_loss"]) and measured["throughput"] > 0
    assert len(measured["partition"]) == 3 and len(measured["stage_comm_seconds"]) == 2
