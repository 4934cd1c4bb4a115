"""What a loaded model and its optimizer really hold, in the planner's terms, and the peak of one training step.

`held_bytes` walks storages (deduplicated by address, so tied or shared tensors count once): 4-bit weights with
their quant states, the other frozen weights, trainable (LoRA) weights, their gradients, optimizer states, buffers,
and a frozen adapter where there is one (GRPO's reference copy: `reference_adapter`).

`StepPeak` measures the tensor peak of CPU code: PyTorch's allocator reports to the profiler only while it runs
(and only what was allocated meanwhile), so the running sum of its [memory] events is the peak *above* the
tensors alive when profiling started; those are counted with `held_bytes`. CUDA needs none of this:
`torch.cuda.max_memory_allocated` is the same quantity, kept by the caching allocator.
"""

from __future__ import annotations


class _Counter:
    def __init__(self):
        self.seen: set[int] = set()

    def bytes(self, tensor) -> int:
        if tensor is None or not hasattr(tensor, "untyped_storage"):
            return 0
        if hasattr(tensor, "to_local"):  # an FSDP2 DTensor: this process holds only its local shard
            tensor = tensor.to_local()
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.seen or storage.nbytes() == 0:
            return 0
        self.seen.add(ptr)
        return storage.nbytes()


def _quant_state_tensors(state):
    yield from (state.absmax, state.code, getattr(state, "offset", None))
    nested = getattr(state, "state2", None)
    if nested is not None:
        yield from (nested.absmax, nested.code)


def held_bytes(model, optimizer=None) -> dict[str, int]:
    counter = _Counter()
    out = {"weights_4bit": 0, "weights_dense": 0, "lora": 0, "gradients": 0, "optimizer": 0, "buffers": 0}
    # FSDP replaces a Linear4bit's Params4bit by a sharded plain parameter; the quantization state then lives only
    # on the module (bitsandbytes keeps it there for this case).
    module_states = {id(m.weight): m.quant_state for m in model.modules()
                     if getattr(m, "quant_state", None) is not None and getattr(m, "weight", None) is not None}
    for name, param in model.named_parameters():
        state = getattr(param, "quant_state", None) or module_states.get(id(param))
        if state is not None:  # bitsandbytes Params4bit: packed uint8 data + its quantization state
            out["weights_4bit"] += counter.bytes(param) + sum(counter.bytes(t) for t in _quant_state_tensors(state))
        elif param.requires_grad:
            out["lora"] += counter.bytes(param)
        elif ".lora_" in name:  # a frozen adapter: GRPO's reference copy of the trained one (TRL's "ref")
            out["reference_adapter"] = out.get("reference_adapter", 0) + counter.bytes(param)
        else:
            out["weights_dense"] += counter.bytes(param)
    for param in model.parameters():
        if param.requires_grad:
            out["gradients"] += counter.bytes(param.grad)
    for buf in model.buffers():
        out["buffers"] += counter.bytes(buf)
    if optimizer is not None:
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        for state in inner.state.values():
            for value in state.values():
                out["optimizer"] += counter.bytes(value)
    return out


class StepPeak:
    """Context manager: peak bytes allocated (net of frees) by CPU tensors while it is open."""

    def __init__(self):
        self.peak = 0
        self._prof = None

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        self._prof.__exit__(*exc)
        events = [e for e in self._prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        current = peak = 0
        for event in events:  # nbytes is negative for a free
            current += event.nbytes()
            peak = max(peak, current)
        self.peak = peak
        return False
