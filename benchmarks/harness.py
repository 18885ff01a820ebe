"""The measuring half of the benchmarks: what a case is, the round-robin timing loop, the peak-memory probe,
the copy-bandwidth yardstick and the machine facts every results file carries. It knows no op; the op
files (reparameterize.py, gaussian_kl.py, ...) describe cases and run.py drives them.

What differs between CPU and CUDA is here, behind three functions that take the device: synchronize
(nothing on CPU; torch.cuda.synchronize on CUDA), seconds_of_calls (perf_counter on CPU; on CUDA, events
around the back-to-back calls, synchronized before and after a sample, never per call) and
peak_extra_bytes (the profiler's allocation events on CPU; the caching allocator's peak counter on CUDA).
The copy yardstick times itself with seconds_of_calls and machine_info adds the GPU's facts. The rest --
warm-up, round-robin, medians -- is the same code on both.
"""
import dataclasses
import datetime
import gc
import math
import os
import statistics
import subprocess
import time

import torch
from torch._C._profiler import _EventType

import vaefast

MODES = ("forward", "forward+backward")  # the timed modes; run.py derives "backward" from the two
FLOAT32_BYTES = 4


@dataclasses.dataclass
class Case:
    """One benchmark row group: the same inputs handed to every provider, in both modes."""

    name: str  # row label, e.g. "gaussian_kl large"
    op: str  # the --ops selector: reparameterize, kl, nll, mmd, loss_head
    shape: str  # the sizes, as the table prints them
    inputs: dict  # argument name -> tensor, passed positionally (in this order) to every provider
    providers: dict  # "vaefast" / "eager" -> fn(*inputs) -> output; run.py adds "compile" from "eager"
    grad_inputs: tuple  # names of the inputs the backward differentiates
    upstream: object = None  # fixed random gradient for a tensor output, None for a scalar loss; a tuple for a tuple
    bytes_moved: dict = None  # mode -> bytes one call must move at the least (memory-bound ops)
    flops: dict = None  # mode -> nominal FLOPs of one call (compute-bound ops)
    measure_memory: bool = False  # probe the peak extra memory of each provider
    large: bool = False  # the compile provider is skipped here under --quick
    notes: list = dataclasses.field(default_factory=list)



def elementwise_bytes(forward_bytes, backward_bytes, elements):
    """Case.bytes_moved of a memory-bound op from the bytes it must move per element each way."""
    return {"forward": forward_bytes * elements, "backward": backward_bytes * elements,
            "forward+backward": (forward_bytes + backward_bytes) * elements}


def elementwise_sizes(device, training_features):
    """(label, batch, features, large) of the memory-bound ops' cases: the training size [256, F], the
    large size [4096, 1024] and, on CUDA, the CUDA issue's size (>= 64M elements, 256 MiB a tensor)."""
    sizes = [("training", 256, training_features, False), ("large", 4096, 1024, True)]
    if torch.device(device).type == "cuda":
        sizes.append(("64M", 256, 2**18, True))
    return sizes

def make_step(fn, case, mode):
    """A no-argument callable running one forward (inputs that need grad do, as in training: the graph is
    built and dropped) or one forward and backward of fn on the case's inputs."""
    args = tuple(case.inputs.values())
    if mode == "forward":
        def step():
            fn(*args)
        return step
    # autograd.grad rather than .backward(): the same kernels run, and no .grad accumulates between calls.
    wrt = tuple(case.inputs[name] for name in case.grad_inputs)

    def step():
        torch.autograd.grad(fn(*args), wrt, grad_outputs=case.upstream)
    return step


@dataclasses.dataclass
class Timing:
    samples_ms: list  # one per repeat: the mean over `inner` back-to-back calls
    inner: int

    def quartiles(self):
        if len(self.samples_ms) == 1:
            return self.samples_ms * 3
        return statistics.quantiles(self.samples_ms, n=4, method="inclusive")

    @property
    def median_ms(self):
        return self.quartiles()[1]

    @property
    def iqr_ms(self):
        q1, _, q3 = self.quartiles()
        return q3 - q1


def synchronize(device):
    """Waits for the device's queued work (CUDA runs asynchronously to Python; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of_calls(step, calls, device):
    """Seconds taken by `calls` back-to-back calls of step. CPU: perf_counter around the loop. CUDA: events
    recorded on the current stream before and after the loop and one synchronize at the end, so the calls
    queue as they would in training (a synchronize per call would add its ~10 us round trip to each). The
    queue is drained first (work left by warm-up calls, say), so the start event is not stuck behind
    earlier work and the loop's launches are not hidden behind it."""
    if device.type == "cuda":
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in ms
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return time.perf_counter() - start


def first_call_seconds(step, device=torch.device("cpu")):
    """Time of one call: for the compile provider the first call is the compilation."""
    return seconds_of_calls(step, 1, device)


def time_round_robin(steps, repeats, warmup, min_sample_s, device=torch.device("cpu")):
    """steps: name -> no-argument callable (run.py: one per provider and mode). Each repeat times every
    step once, in an order rotated by one per repeat, so that drift (another job starting, the CPU clocking
    down) hits all steps alike and none always runs right after the same neighbour. A sample is the mean of
    `inner` back-to-back calls, with inner chosen per step so that a sample lasts at least min_sample_s (a
    10 us kernel timed alone would measure the timer and Python, not the kernel). The device picks the
    clock (seconds_of_calls)."""
    inner = {}
    for name, step in steps.items():
        for _ in range(warmup):
            step()
        single = first_call_seconds(step, device)
        if single < min_sample_s:  # a short call is noisy: take the fastest of a few (a long one costs time)
            single = min(single, *(first_call_seconds(step, device) for _ in range(2)))
        inner[name] = max(1, math.ceil(min_sample_s / max(single, 1e-7)))
    names = list(steps)
    samples = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in one provider's sample would be charged to that provider alone
    try:
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                calls = inner[name]
                samples[name].append(seconds_of_calls(steps[name], calls, device) / calls * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(samples[name], inner[name]) for name in names}


MEMORY_METHODS = {
    "cpu": "torch.profiler.profile(profile_memory=True): peak of the running sum of the allocation events of "
           "one call (everything allocated through torch's CPU allocator, outputs and gradients included) "
           "above what was live before it; no clock involved. Scratch a kernel takes with malloc/new outside "
           "torch's allocator is not seen.",
    "cuda": "torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats, minus "
            "torch.cuda.memory_allocated before the call: the most bytes held through torch's CUDA caching "
            "allocator during one call (outputs and gradients included) above what was live before it. "
            "Memory a library takes with cudaMalloc outside torch's allocator (KeOps' scratch) is not seen.",
}


def peak_extra_bytes(step, device=torch.device("cpu")):
    """Peak bytes allocated through torch's allocator for the device during one call of step, above the
    bytes live before it (see MEMORY_METHODS)."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = []

    def walk(nodes):
        for node in nodes:
            if node.tag == _EventType.Allocation:
                events.append((node.start_time_ns, node.extra_fields.alloc_size))  # negative: a free
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def copy_bandwidth_gbs(numel, repeats, device=torch.device("cpu")):
    """GB/s of dst.copy_(src) on float32 tensors of numel elements on the device (bytes read + bytes
    written; on CUDA a device-to-device copy timed with events): the machine's practical memory bandwidth,
    the yardstick of the memory-bound ops. dst is written once before timing, so page faults (CPU) and
    first-touch costs are not in it."""
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [seconds_of_calls(lambda: dst.copy_(src), 1, device) for _ in range(repeats)]
    return 2 * numel * FLOAT32_BYTES / statistics.median(times) / 1e9


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cache_size(level):
    """Size of the CPU's cache at `level` as the kernel reports it ("32768K"), or "unknown". The large
    cases' inputs (16 MiB per tensor) can partly stay in a big last-level cache between calls, which lets a
    fused op beat the DRAM copy bandwidth."""
    try:
        for index in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            folder = os.path.join("/sys/devices/system/cpu/cpu0/cache", index)
            with open(os.path.join(folder, "level")) as handle:
                if handle.read().strip() != str(level):
                    continue
            with open(os.path.join(folder, "size")) as handle:
                return handle.read().strip()
    except OSError:
        pass
    return "unknown"


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gpu_info(device):
    """The CUDA device's facts: name, memory, compute capability, the CUDA torch was built with, and the
    driver's CUDA API version where this torch exposes it (a private function, absent from some builds)."""
    properties = torch.cuda.get_device_properties(device)
    driver = getattr(torch._C, "_cuda_getDriverVersion", None)
    driver_version = driver() if driver is not None else None  # e.g. 12040 for 12.4
    return {
        "gpu": properties.name,
        "gpu memory": f"{properties.total_memory / 2**30:.1f} GiB",
        "gpu compute capability": f"{properties.major}.{properties.minor}",
        "torch.version.cuda": torch.version.cuda,
        "CUDA driver API version": (f"{driver_version // 1000}.{driver_version % 1000 // 10}"
                                    if driver_version else "not exposed by this torch"),
    }


def load_warning(load_start, threads):
    """A run note when the 1-minute load average, at the start or now, shows other jobs on the machine, else
    None. The run's own `threads` busy threads count in the load (2 threads on 2 cores read ~2.0 alone), so
    what is left over is the others'; half a core of it on average over a minute is enough to warn: with
    more runnable threads than cores, a parallel region waits for a descheduled thread (a 16-20 ms stall
    per region was seen with 2 threads under a load of 7), and such timings are noise."""
    busiest = max(load_start, os.getloadavg()[0])
    others = busiest - threads
    if others <= 0.5:
        return None
    return (f"WARNING: 1-minute load average reached {busiest:.1f} with this run's {threads} threads on "
            f"{len(os.sched_getaffinity(0))} cores: about {others:.1f} cores of other jobs shared the machine, "
            "so these timings are not representative")


def machine_info(threads, device=torch.device("cpu")):
    """The facts a reader needs to judge the numbers: hardware, software, build, threads, load."""
    info = vaefast.backend_info()
    build = info.get("build", {})
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores available": len(os.sched_getaffinity(0)),
        "L3 cache": cache_size(3),
        "threads (torch.set_num_threads)": threads,
        "load average at start (1, 5, 15 min)": ", ".join(f"{load:.2f}" for load in os.getloadavg()),
        "torch": torch.__version__,
        "vaefast": f"{vaefast.__version__} (commit {git_commit()})",
        "vaefast backend": info["backend"] if info["compiled"] else f"reference only ({info['load_error']})",
        "vaefast build cpu_capability": build.get("cpu_capability", "n/a"),
        "vaefast build cxx_flags": build.get("cxx_flags", "n/a"),
    }
    if device.type == "cuda":
        facts.update(gpu_info(device))
    facts["peak memory method"] = MEMORY_METHODS[device.type]
    return facts
