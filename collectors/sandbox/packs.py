"""GPU models and fixture packs: what nvidia-smi answers on a node and what its logs say happened.

A node's GPUs come from its instance type, its sickness from its fixture pack (healthy, or one way
of being sick; docs/scenarios.md lists them). The nvidia-smi answers are rendered once per sandbox
and profile (model, count, pack) into the shared stand-in folders that nodes see read-only as
/usr/local/bin (content.py). Per-node values (GPU UUIDs and serial numbers, hostname, instance id)
stay out of them as @tokens@ that the stand-ins fill in from .sandbox/nodes.tsv, so a 1000-node
sandbox writes a handful of shared files instead of a copy per node.
"""

from __future__ import annotations

import hashlib
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

from collectors.sandbox import FIXTURES

DRIVER = "535.183.01"
CUDA = "12.2"
NVIDIA_SMI_FALLEN_OFF_BUS = 15  # nvidia-smi's exit status for "GPU has fallen off the bus"
ORCHESTRATOR_UNITS = {"eks": "Kubernetes Kubelet", "slurm": "Slurm node daemon"}
# The fixture packs (docs/scenarios.md); the GPU ones need a GPU instance type (pack_problem).
GPU_PACKS = ("xid79", "ecc", "nvlink")
PACKS = ("healthy", *GPU_PACKS, "disk_full", "oom")


@dataclass(frozen=True)
class GpuModel:
    key: str
    name: str
    architecture: str
    memory_mib: int
    memory_reserved_mib: int
    memory_used_mib: int
    power_cap_w: int
    power_min_w: int
    idle_power_w: int
    idle_temperature_c: int
    perf_state: str
    fan: str
    mig: str
    vbios: str
    device_id: str
    subsystem_id: str
    board_part: str
    gpu_part: str
    inforom: str
    pcie_gen: int
    pcie_gen_idle: int
    nvlinks: int
    nvlink_speed: str
    bar1_mib: int
    banks: int
    clocks: tuple[int, int, int]  # graphics, memory, video (MHz) at full speed
    clocks_idle: tuple[int, int, int]
    temperatures: tuple[int, int, int]  # shutdown, slowdown, max operating (C)
    memory_temperature: tuple[str, str]  # current, max operating


H100 = GpuModel(
    key="h100", name="NVIDIA H100 80GB HBM3", architecture="Hopper", memory_mib=81559, memory_reserved_mib=328,
    memory_used_mib=2, power_cap_w=700, power_min_w=200, idle_power_w=68, idle_temperature_c=27, perf_state="P0",
    fan="N/A", mig="Disabled", vbios="96.00.99.00.01", device_id="0x233010DE", subsystem_id="0x16C110DE",
    board_part="692-2G520-0200-000", gpu_part="2330-885-A1", inforom="G520.0200.00.05", pcie_gen=5,
    pcie_gen_idle=5, nvlinks=18, nvlink_speed="26.562 GB/s", bar1_mib=131072, banks=2560,
    clocks=(1980, 2619, 1545), clocks_idle=(1980, 2619, 1545), temperatures=(92, 89, 87),
    memory_temperature=("36 C", "95 C"),
)
A100_40 = GpuModel(
    key="a100-40", name="NVIDIA A100-SXM4-40GB", architecture="Ampere", memory_mib=40960, memory_reserved_mib=635,
    memory_used_mib=4, power_cap_w=400, power_min_w=100, idle_power_w=50, idle_temperature_c=30, perf_state="P0",
    fan="N/A", mig="Disabled", vbios="92.00.45.00.03", device_id="0x20B010DE", subsystem_id="0x134F10DE",
    board_part="692-2G506-0200-002", gpu_part="20B0-884-A1", inforom="G506.0200.00.04", pcie_gen=4,
    pcie_gen_idle=4, nvlinks=12, nvlink_speed="25 GB/s", bar1_mib=65536, banks=640,
    clocks=(1410, 1215, 1275), clocks_idle=(1410, 1215, 1275), temperatures=(92, 89, 85),
    memory_temperature=("33 C", "95 C"),
)
A100_80 = GpuModel(
    key="a100-80", name="NVIDIA A100-SXM4-80GB", architecture="Ampere", memory_mib=81920, memory_reserved_mib=659,
    memory_used_mib=4, power_cap_w=400, power_min_w=100, idle_power_w=61, idle_temperature_c=31, perf_state="P0",
    fan="N/A", mig="Disabled", vbios="92.00.68.00.01", device_id="0x20B210DE", subsystem_id="0x147F10DE",
    board_part="692-2G506-0210-002", gpu_part="20B2-895-A1", inforom="G506.0210.00.03", pcie_gen=4,
    pcie_gen_idle=4, nvlinks=12, nvlink_speed="25 GB/s", bar1_mib=131072, banks=640,
    clocks=(1410, 1593, 1275), clocks_idle=(1410, 1593, 1275), temperatures=(92, 89, 85),
    memory_temperature=("34 C", "95 C"),
)
A10G = GpuModel(
    key="a10g", name="NVIDIA A10G", architecture="Ampere", memory_mib=23028, memory_reserved_mib=0,
    memory_used_mib=0, power_cap_w=300, power_min_w=100, idle_power_w=9, idle_temperature_c=24, perf_state="P8",
    fan="0%", mig="N/A", vbios="94.02.75.00.01", device_id="0x223710DE", subsystem_id="0x152F10DE",
    board_part="900-2G133-A840-000", gpu_part="2237-892-A1", inforom="G133.0210.00.01", pcie_gen=4,
    pcie_gen_idle=1, nvlinks=0, nvlink_speed="", bar1_mib=32768, banks=192,
    clocks=(1710, 6251, 1500), clocks_idle=(210, 405, 555), temperatures=(98, 95, 88),
    memory_temperature=("N/A", "N/A"),
)
# PCI bus ids as the instance types expose their GPUs.
BUS_IDS = {
    ("h100", 8): ["53:00.0", "64:00.0", "75:00.0", "86:00.0", "97:00.0", "A8:00.0", "B9:00.0", "CA:00.0"],
    ("a100-40", 8): ["10:1C.0", "10:1D.0", "20:1C.0", "20:1D.0", "90:1C.0", "90:1D.0", "A0:1C.0", "A0:1D.0"],
    ("a10g", 1): ["00:1E.0"],
    ("a10g", 4): ["00:1B.0", "00:1C.0", "00:1D.0", "00:1E.0"],
    ("a10g", 8): ["00:16.0", "00:17.0", "00:18.0", "00:19.0", "00:1A.0", "00:1B.0", "00:1C.0", "00:1D.0"],
}
BUS_IDS[("a100-80", 8)] = BUS_IDS[("a100-40", 8)]
INSTANCE_GPUS = {
    "ml.p5.48xlarge": (H100, 8),
    "ml.p4d.24xlarge": (A100_40, 8),
    "ml.p4de.24xlarge": (A100_80, 8),
    "ml.g5.12xlarge": (A10G, 4),
    "ml.g5.24xlarge": (A10G, 4),
    "ml.g5.48xlarge": (A10G, 8),
}
# Which GPU each sick pack hurts (on a one-GPU node, GPU 0).
SICK_GPU = {"xid79": 3, "ecc": 2, "nvlink": 5}
NVLINK_DOWN = (3, 7)  # the links the nvlink pack takes down on its GPU


def gpu_model(instance_type: str) -> tuple[GpuModel, int] | None:
    """(model, count) of the instance type's NVIDIA GPUs, or None (CPU and Trainium instances)."""
    if instance_type in INSTANCE_GPUS:
        return INSTANCE_GPUS[instance_type]
    if instance_type.startswith("ml.g5."):
        return A10G, 1
    return None


def pack_problem(pack: str, instance_type: str) -> str | None:
    """Why a pack cannot be shown on a node of this type, or None."""
    model = gpu_model(instance_type)
    if pack in GPU_PACKS and model is None:
        return f"pack {pack!r} needs a GPU instance type, and {instance_type} has no NVIDIA GPU"
    if pack == "nvlink" and not model[0].nvlinks:
        return f"pack 'nvlink' needs GPUs with NVLink, and the {model[0].name} of {instance_type} has none"
    return None


def sick_gpu_index(pack: str, count: int) -> int | None:
    return min(SICK_GPU[pack], count - 1) if pack in SICK_GPU else None


def gpu_profile(instance_type: str, pack: str) -> str:
    """The name of the stand-in data a node's nvidia-smi serves: "-" on nodes without a GPU."""
    model = gpu_model(instance_type)
    if model is None:
        return "-"
    gpu_pack = pack if pack in GPU_PACKS else "healthy"
    return f"{model[0].key}x{model[1]}-{gpu_pack}"


def gpu_identities(instance_id: str, count: int) -> tuple[list[str], list[str]]:
    """UUIDs and serial numbers of a node's GPUs: random-looking, the same on every run."""
    uuids, serials = [], []
    for index in range(count):
        digest = hashlib.sha256(f"{instance_id}/gpu{index}".encode()).hexdigest()
        uuids.append(f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}")
        serials.append(str(1650000000000 + int(digest[32:42], 16) % 99999999999))
    return uuids, serials


# ---------------------------------------------------------------------------------------------
# nvidia-smi data for one profile (model, count, pack)


@dataclass(frozen=True)
class GpuState:
    """One GPU as a pack leaves it."""

    index: int
    bus: str  # "53:00.0"
    lost: bool = False
    dram_uncorrectable: int = 0
    remap_pending: bool = False
    links_down: tuple[int, ...] = ()

    @property
    def bus_id(self) -> str:
        return f"00000000:{self.bus}"

    @property
    def xid_bus(self) -> str:
        """The PCI address as NVRM prints it in Xid lines: 0000:53:00."""
        return f"0000:{self.bus.split('.')[0]}"


def gpu_states(model: GpuModel, count: int, pack: str) -> list[GpuState]:
    sick = sick_gpu_index(pack, count)
    states = []
    for index, bus in enumerate(BUS_IDS.get((model.key, count), BUS_IDS[(model.key, 8)][:count])):
        effects = {}
        if index == sick:
            effects = {
                "xid79": {"lost": True},
                "ecc": {"dram_uncorrectable": 1, "remap_pending": True},
                "nvlink": {"links_down": NVLINK_DOWN if model.nvlinks else ()},
            }[pack]
        states.append(GpuState(index=index, bus=bus, **effects))
    return states


def device_handle_error(gpu: GpuState) -> str:
    return f"Unable to determine the device handle for GPU{gpu.xid_bus}.0: Unknown Error"


def table_rows(model: GpuModel, gpu: GpuState) -> list[str]:
    temperature = model.idle_temperature_c + gpu.index * 3 % 5
    power = f"{model.idle_power_w + gpu.index % 4}W / {model.power_cap_w}W"
    memory = f"{model.memory_used_mib}MiB / {model.memory_mib}MiB"
    mig = "Disabled" if model.mig == "Disabled" else "N/A"
    return [
        f"| {gpu.index:>3}  {model.name:<31}On  | {gpu.bus_id} Off | {gpu.dram_uncorrectable:>20} |",
        f"| {model.fan:<3}   {temperature:>2}C    {model.perf_state}{power:>24} | {memory:>20} |"
        f"      0%      Default |",
        f"|{'':41}|{'':22}|{mig:>21} |",
        "+-----------------------------------------+----------------------+----------------------+",
    ]


def render_table(model: GpuModel, gpus: list[GpuState]) -> str:
    header = [
        "+---------------------------------------------------------------------------------------+",
        f"| NVIDIA-SMI {DRIVER}             Driver Version: {DRIVER}   CUDA Version: {CUDA}     |",
        "|-----------------------------------------+----------------------+----------------------+",
        "| GPU  Name                 Persistence-M | Bus-Id        Disp.A | Volatile Uncorr. ECC |",
        "| Fan  Temp   Perf          Pwr:Usage/Cap |         Memory-Usage | GPU-Util  Compute M. |",
        "|                                         |                      |               MIG M. |",
        "|=========================================+======================+======================|",
    ]
    rows = [row for gpu in gpus for row in table_rows(model, gpu)]
    processes = (FIXTURES / "nvidia-smi" / "processes.txt").read_text()
    return "@now@\n" + "\n".join(header + rows) + "\n\n" + processes


def q_variables(model: GpuModel, gpu: GpuState, count: int) -> dict[str, object]:
    graphics, memory_clock, video = model.clocks
    idle_graphics, idle_memory, idle_video = model.clocks_idle
    shutdown, slowdown, max_operating = model.temperatures
    bus, device = gpu.bus.split(":")[0], gpu.bus.split(":")[1].split(".")[0]
    return {
        "index": gpu.index, "bus_id": gpu.bus_id, "bus": bus, "device": device, "name": model.name,
        "architecture": model.architecture, "mig": model.mig, "vbios": model.vbios,
        "board_id": f"0x{bus}{device}", "board_part": model.board_part, "gpu_part": model.gpu_part,
        "module_id": gpu.index + 1, "inforom": model.inforom, "ecc_object": "7.16", "driver": DRIVER,
        "reset_required": "Yes" if gpu.remap_pending else "No", "device_id": model.device_id,
        "subsystem_id": model.subsystem_id, "pcie_gen": model.pcie_gen, "pcie_gen_now": model.pcie_gen_idle,
        "fan_q": "0 %" if model.fan == "0%" else "N/A", "perf": model.perf_state,
        "memory_total": model.memory_mib, "memory_reserved": model.memory_reserved_mib,
        "memory_used": model.memory_used_mib,
        "memory_free": model.memory_mib - model.memory_reserved_mib - model.memory_used_mib,
        "bar1": model.bar1_mib, "bar1_free": model.bar1_mib - 1, "dram_correctable": 0,
        "dram_uncorrectable": gpu.dram_uncorrectable, "remapped_correctable": 0,
        "remapped_uncorrectable": 1 if gpu.remap_pending else 0,
        "remap_pending": "Yes" if gpu.remap_pending else "No", "remap_failure": "No",
        "banks_max": model.banks - (1 if gpu.remap_pending else 0), "banks_high": 1 if gpu.remap_pending else 0,
        "temperature": model.idle_temperature_c + gpu.index * 3 % 5, "temp_shutdown": shutdown,
        "temp_slowdown": slowdown, "temp_max_operating": max_operating,
        "memory_temperature": model.memory_temperature[0], "memory_temp_max": model.memory_temperature[1],
        "power_draw_precise": f"{model.idle_power_w + gpu.index % 4}.{17 + gpu.index * 11:02d}",
        "power_cap": model.power_cap_w, "power_min": model.power_min_w,
        "clock_graphics": graphics, "clock_memory": memory_clock, "clock_video": video,
        "clock_graphics_now": idle_graphics, "clock_memory_now": idle_memory, "clock_video_now": idle_video,
        "count": count, "cuda": CUDA,
    }


def render_q(model: GpuModel, gpus: list[GpuState]) -> str:
    header = string.Template((FIXTURES / "nvidia-smi" / "q-header.txt").read_text())
    per_gpu = string.Template((FIXTURES / "nvidia-smi" / "q-gpu.txt").read_text())
    text = header.substitute(driver=DRIVER, cuda=CUDA, count=len(gpus))
    return text + "".join(per_gpu.substitute(q_variables(model, gpu, len(gpus))) for gpu in gpus)


# --query-gpu fields: name -> (unit, value for one GPU). Aliases map onto these names.
def query_fields(model: GpuModel, gpu: GpuState, count: int) -> dict[str, tuple[str, object]]:
    graphics, memory_clock, _ = model.clocks
    idle_graphics, idle_memory, _ = model.clocks_idle
    free = model.memory_mib - model.memory_reserved_mib - model.memory_used_mib
    return {
        "timestamp": ("", "@querytime@"), "driver_version": ("", DRIVER), "count": ("", count),
        "name": ("", model.name), "serial": ("", f"@serial{gpu.index}@"), "uuid": ("", f"@uuid{gpu.index}@"),
        "pci.bus_id": ("", gpu.bus_id), "index": ("", gpu.index), "vbios_version": ("", model.vbios),
        "persistence_mode": ("", "Enabled"), "pstate": ("", model.perf_state), "compute_mode": ("", "Default"),
        "fan.speed": ("%", "0 %" if model.fan == "0%" else "[N/A]"),
        "temperature.gpu": ("", model.idle_temperature_c + gpu.index * 3 % 5),
        "temperature.memory": ("", model.memory_temperature[0].split()[0]),
        "utilization.gpu": ("%", "0 %"), "utilization.memory": ("%", "0 %"),
        "memory.total": ("MiB", f"{model.memory_mib} MiB"), "memory.reserved": ("MiB", f"{model.memory_reserved_mib} MiB"),
        "memory.used": ("MiB", f"{model.memory_used_mib} MiB"), "memory.free": ("MiB", f"{free} MiB"),
        "power.draw": ("W", f"{model.idle_power_w + gpu.index % 4}.{17 + gpu.index * 11:02d} W"),
        "power.limit": ("W", f"{model.power_cap_w}.00 W"),
        "clocks.sm": ("MHz", f"{idle_graphics} MHz"), "clocks.mem": ("MHz", f"{idle_memory} MHz"),
        "clocks.max.sm": ("MHz", f"{graphics} MHz"), "clocks.max.mem": ("MHz", f"{memory_clock} MHz"),
        "pcie.link.gen.current": ("", model.pcie_gen_idle), "pcie.link.gen.max": ("", model.pcie_gen),
        "pcie.link.width.current": ("", 16), "pcie.link.width.max": ("", 16),
        "clocks.gr": ("MHz", f"{idle_graphics} MHz"), "clocks.video": ("MHz", f"{model.clocks_idle[2]} MHz"),
        "power.default_limit": ("W", f"{model.power_cap_w}.00 W"), "power.min_limit": ("W", f"{model.power_min_w}.00 W"),
        "power.max_limit": ("W", f"{model.power_cap_w}.00 W"), "enforced.power.limit": ("W", f"{model.power_cap_w}.00 W"),
        "display_mode": ("", "Disabled"), "display_active": ("", "Disabled"), "accounting.mode": ("", "Disabled"),
        "driver_model.current": ("", "[N/A]"), "inforom.img": ("", model.inforom),
        # Idle, and nothing else holding the clocks down.
        "clocks_event_reasons.active": ("", "0x0000000000000001"),
        "ecc.mode.current": ("", "Enabled"), "ecc.mode.pending": ("", "Enabled"),
        "mig.mode.current": ("", "[N/A]" if model.mig == "N/A" else model.mig),
        "mig.mode.pending": ("", "[N/A]" if model.mig == "N/A" else model.mig),
        "ecc.errors.corrected.volatile.total": ("", 0),
        "ecc.errors.uncorrected.volatile.total": ("", gpu.dram_uncorrectable),
        "ecc.errors.corrected.aggregate.total": ("", 0),
        "ecc.errors.uncorrected.aggregate.total": ("", gpu.dram_uncorrectable),
        # Ampere and Hopper remap rows instead of retiring pages.
        "retired_pages.sbe": ("", "[N/A]"), "retired_pages.dbe": ("", "[N/A]"), "retired_pages.pending": ("", "[N/A]"),
    }


# Other names nvidia-smi accepts for the same fields.
QUERY_ALIASES = {
    "gpu_name": "name", "gpu_serial": "serial", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id",
    "clocks_throttle_reasons.active": "clocks_event_reasons.active", "clocks.graphics": "clocks.gr",
    "clocks.memory": "clocks.mem", "clocks.max.memory": "clocks.max.mem", "clocks.max.graphics": "clocks.max.sm",
    "retired_pages.single_bit_ecc.count": "retired_pages.sbe", "retired_pages.double_bit.count": "retired_pages.dbe",
}


def render_query_table(rows: list[dict[str, tuple[str, object]]], lost: list[bool], errors: list[str]) -> str:
    """One tab-separated table query.awk reads: field names, their units, then one row per GPU.

    A GPU nvidia-smi cannot reach has the row `!` + the error line it prints in that GPU's place.
    """
    names = list(rows[0])
    lines = ["\t".join(names), "\t".join(rows[0][name][0] for name in names)]
    for row, is_lost, error in zip(rows, lost, errors):
        lines.append("!" + error if is_lost else "\t".join(str(row[name][1]) for name in names))
    return "\n".join(lines) + "\n"


def render_remapped(gpus: list[GpuState]) -> list[dict[str, tuple[str, object]]]:
    return [
        {
            "gpu_bus_id": ("", gpu.bus_id), "gpu_uuid": ("", f"@uuid{gpu.index}@"),
            "remapped_rows.correctable": ("", 0),
            "remapped_rows.uncorrectable": ("", 1 if gpu.remap_pending else 0),
            "remapped_rows.pending": ("", 1 if gpu.remap_pending else 0), "remapped_rows.failure": ("", 0),
        }
        for gpu in gpus
    ]


def render_list(model: GpuModel, gpus: list[GpuState]) -> str:
    return "".join(
        device_handle_error(gpu) + "\n" if gpu.lost else f"GPU {gpu.index}: {model.name} (UUID: @uuid{gpu.index}@)\n"
        for gpu in gpus
    )


def render_nvlink_status(model: GpuModel, gpus: list[GpuState]) -> str:
    lines = []
    for gpu in gpus:
        lines.append(f"GPU {gpu.index}: {model.name} (UUID: @uuid{gpu.index}@)")
        lines += [
            f"\t Link {link}: " + ("<inactive>" if link in gpu.links_down else model.nvlink_speed)
            for link in range(model.nvlinks)
        ]
    return "\n".join(lines) + "\n"


def render_nvlink_errors(model: GpuModel, gpus: list[GpuState]) -> str:
    lines = []
    for gpu in gpus:
        lines.append(f"GPU {gpu.index}: {model.name} (UUID: @uuid{gpu.index}@)")
        for link in range(model.nvlinks):
            replays, recoveries, crcs = (14, 3, 271) if link in gpu.links_down else (0, 0, 0)
            lines += [
                f"\t Link {link}: Replay Errors: {replays}",
                f"\t Link {link}: Recovery Errors: {recoveries}",
                f"\t Link {link}: CRC Errors: {crcs}",
            ]
    return "\n".join(lines) + "\n"


def render_gpu_profile(directory: Path, model: GpuModel, count: int, pack: str) -> None:
    """Every answer the nvidia-smi stand-in gives for one (model, count, pack), into `directory`."""
    gpus = gpu_states(model, count, pack)
    lost = [gpu for gpu in gpus if gpu.lost]
    directory.mkdir(parents=True)
    files = {
        "table.txt": render_table(model, gpus),
        "q.txt": render_q(model, gpus),
        "L.txt": render_list(model, gpus),
        "nvlink-s.txt": render_nvlink_status(model, gpus),
        "nvlink-e.txt": render_nvlink_errors(model, gpus),
        # A lost GPU stops the whole-device reports at the first error, with nvidia-smi's status.
        "failure": f"{NVIDIA_SMI_FALLEN_OFF_BUS}\t{device_handle_error(lost[0])}\n" if lost else "",
    }
    errors = [device_handle_error(gpu) for gpu in gpus]
    is_lost = [gpu.lost for gpu in gpus]
    files["query.tsv"] = render_query_table([query_fields(model, gpu, count) for gpu in gpus], is_lost, errors)
    files["remapped.tsv"] = render_query_table(render_remapped(gpus), is_lost, errors)
    files["aliases.tsv"] = "".join(f"{alias}\t{name}\n" for alias, name in QUERY_ALIASES.items())
    for name, text in files.items():
        (directory / name).write_text(text)


# ---------------------------------------------------------------------------------------------
# Logs a pack adds: (seconds after boot, kernel message) and syslog lines


def kernel_events(pack: str, instance_type: str) -> list[tuple[float, str]]:
    """Kernel messages (for kern.log, syslog and dmesg) that make a node look the way its pack says."""
    model = gpu_model(instance_type)
    events = []
    if model:
        events.append((14.203114, "nvidia: loading out-of-tree module taints kernel."))
        events.append((14.532208, f"NVRM: loading NVIDIA UNIX x86_64 Kernel Module  {DRIVER}  Thu Jun 20 10:15:37 UTC 2024"))
    if pack in SICK_GPU and model:
        sick = gpu_states(*model, pack)[sick_gpu_index(pack, model[1])]
        events += gpu_pack_events(pack, sick)
    if pack == "oom":
        events += [
            (2731.402117, "python invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), "
                          "order=0, oom_score_adj=0"),
            (2731.402201, "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0-1,"
                          "global_oom,task_memcg=/system.slice/slurmstepd.scope,task=python,pid=48213,uid=0"),
            (2731.402366, "Out of memory: Killed process 48213 (python) total-vm:2143318016kB, anon-rss:1994210304kB, "
                          "file-rss:81920kB, shmem-rss:0kB, UID:0 pgtables:3905024kB oom_score_adj:0"),
        ]
    return events


def gpu_pack_events(pack: str, gpu: GpuState) -> list[tuple[float, str]]:
    where = f"NVRM: Xid (PCI:{gpu.xid_bus})"
    if pack == "xid79":
        return [
            (3102.662730, f"{where}: 79, pid=48213, name=python, GPU has fallen off the bus."),
            (3102.662871, f"NVRM: GPU {gpu.xid_bus}.0: GPU has fallen off the bus."),
            (3102.663004, f"NVRM: GPU {gpu.xid_bus}.0: GPU serial number is @serial{gpu.index}@."),
            (3102.669412, "NVRM: A GPU crash dump has been created. If possible, please run"),
            (3102.669413, "NVRM: nvidia-bug-report.sh as root to collect this data before"),
            (3102.669414, "NVRM: the NVIDIA kernel module is unloaded."),
        ]
    if pack == "ecc":
        return [
            (2950.117304, f"{where}: 48, pid='<unknown>', name=<unknown>, An uncorrectable double bit error (DBE) "
                          "has been detected on GPU in the framebuffer at partition 7, subpartition 0."),
            (2950.118225, f"{where}: 63, pid='<unknown>', name=<unknown>, Row Remapper: New row (0x00000000000a2f31) "
                          "Marked for Remapping, reset gpu to activate."),
        ]
    return [
        (2874.530921, f"{where}: 74, pid=48213, name=python, NVLink: fatal error detected on link "
                      f"{NVLINK_DOWN[0]}(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)"),
        (2874.531044, f"{where}: 74, pid=48213, name=python, NVLink: fatal error detected on link "
                      f"{NVLINK_DOWN[1]}(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)"),
    ]


def syslog_events(pack: str) -> list[tuple[float, str]]:
    """Non-kernel syslog lines a pack adds: (seconds after boot, "program[pid]: message")."""
    if pack == "disk_full":
        return [
            (3011.000412, "rsyslogd[812]: file '/var/log/syslog'[7] write error - see https://www.rsyslog.com/"
                          "solving-rsyslog-write-errors/ for help OS error: No space left on device [v8.2001.0 try "
                          "https://www.rsyslog.com/e/2027 ]"),
            (3011.300871, "containerd[2301]: failed to write log: write /var/lib/containerd/tmp: no space left on device"),
        ]
    return []


def agent_events(pack: str) -> list[tuple[float, str]]:
    """Lines the HyperPod cluster agent log gets: (seconds after boot, "LEVEL [Component] message")."""
    checks = {
        "xid79": "ERROR [HealthMonitor] GPU health check failed on @instance_id@: GPU at @sick_bus@ is not reachable (Xid 79)",
        "ecc": "WARN [HealthMonitor] GPU health check on @instance_id@: uncorrectable ECC error, row remapping pending (Xid 48, Xid 63)",
        "nvlink": "ERROR [HealthMonitor] GPU health check failed on @instance_id@: NVLink errors on GPU at @sick_bus@ (Xid 74)",
        "disk_full": "ERROR [HealthMonitor] Disk health check failed on @instance_id@: / is 100% full",
        "oom": "WARN [HealthMonitor] Memory pressure on @instance_id@: a process was killed by the OOM killer",
    }
    return [(3120.0, checks[pack])] if pack in checks else []


def sick_bus(pack: str, instance_type: str) -> str:
    model = gpu_model(instance_type)
    if pack not in SICK_GPU or model is None:
        return ""
    return gpu_states(*model, pack)[sick_gpu_index(pack, model[1])].bus_id


# ---------------------------------------------------------------------------------------------
# The shared stand-in folder


def copy_stand_ins(bin_dir: Path, with_nvidia_smi: bool, with_df: bool) -> None:
    """The stand-in scripts a kind of node has (a CPU node has no nvidia-smi), and their helpers."""
    names = ["systemctl", "dmesg"] + (["nvidia-smi"] if with_nvidia_smi else []) + (["df"] if with_df else [])
    for name in names:
        shutil.copy(FIXTURES / "bin" / name, bin_dir / name)
    data = bin_dir / ".sandbox"
    data.mkdir()
    for helper in ("render.awk", "query.awk", "list-units.awk"):
        shutil.copy(FIXTURES / "bin" / helper, data / helper)


def write_gpu_profiles(data: Path, profiles: set[tuple[str, str]]) -> None:
    """Render each (instance type, pack) profile the nodes use, once."""
    done = set()
    for instance_type, pack in profiles:
        name = gpu_profile(instance_type, pack)
        if name == "-" or name in done:
            continue
        model, count = gpu_model(instance_type)
        render_gpu_profile(data / "gpu" / name, model, count, pack if pack in GPU_PACKS else "healthy")
        done.add(name)
