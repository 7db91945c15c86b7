"""The words of an exported MONAI bundle: its model card (``docs/README.md``), licence and
the metadata's plain-language fields. Kept apart from :mod:`mrisr.bundle` so its logic reads
without the prose."""

from __future__ import annotations

import json
from typing import Any

AUTHORS = "mrisr developers"
COPYRIGHT = "Copyright (c) mrisr developers; model weights derived from TCIA PROSTATEx (CC BY 3.0)"
DATA_SOURCE = ("ProstateX T2-weighted TSE (TCIA PROSTATEx, CC BY 3.0; Siemens 3 T): patients ProstateX-0000 and "
               "-0001 for training (a Siemens Skyra, 0.5-0.6 mm pixels), ProstateX-0218 for validation (never "
               "trained on; a Siemens TrioTim, 0.625 mm pixels, parallel imaging)")
INTENDED_USE = ("Research on MRI super-resolution (thinner slices, sharper in-plane detail) for inspection, "
                "comparison and downstream experiments. Not validated for diagnosis: a diffusion model can "
                "invent plausible detail that is not in the patient.")
REFERENCES = [
    "Zhao, K., Hung, A. L. Y., Pang, K., Zheng, H., Sung, K. PartDiff: Image super-resolution with Partial "
    "Diffusion Models.",
    "Saharia, C. et al. Image Super-Resolution via Iterative Refinement (SR3).",
    "Litjens, G. et al. Computer-aided detection of prostate cancer in MRI. IEEE TMI 2014;33:1083-1092 "
    "(the PROSTATEx data, with The Cancer Imaging Archive).",
]


def license_text() -> str:
    return (
        "mrisr bundle licence\n"
        "====================\n\n"
        "Code and configuration: Apache License 2.0 (SPDX: Apache-2.0), as mrisr itself;\n"
        "the full text is at https://www.apache.org/licenses/LICENSE-2.0\n\n"
        "Model weights (models/model.pt): trained by the mrisr developers on ProstateX T2 images of the\n"
        "TCIA SPIE-AAPM-NCI PROSTATEx collection (TCIA terms: CC BY 3.0). Cite Litjens et al., IEEE TMI\n"
        "2014;33:1083-1092, and The Cancer Imaging Archive.\n\n"
        "Not a medical device; not for diagnosis.\n"
    )


def _table(metrics: dict[str, Any]) -> str:
    if not metrics:
        return "No measured metrics are stored for this model (a user's model: measure it with " \
               "`pipelines/benchmark_mri.py`).\n"
    rows = [f"| {k} | {v} |" for k, v in metrics.items()]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def readme(metadata: dict[str, Any], config: dict[str, Any], script_note: str | None) -> str:
    """The bundle's ``docs/README.md`` from its metadata and the model's config."""
    m = metadata["mrisr"]
    recipe = json.dumps(m.get("training_recipe") or {}, indent=2, sort_keys=True)
    degradation = config["task"].get("degradation", {}).get("description", "not recorded")
    scripted = ("`python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file "
                "models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json` "
                "exports it." if script_note is None else
                f"`ckpt_export` to TorchScript does not apply: `torch.jit.script` rejects the network "
                f"(\"{script_note}\"), and tracing would freeze one plane size, while the sampler that calls "
                "the network several times per plane is Python in any case. Run the bundle with "
                "`monai.bundle run`, which needs no TorchScript.")
    sampling = ("one network pass per plane" if m["method"] == "regression" else
                f"{m['sampler'] or 'ancestral'} sampler"
                + (f", {m['steps']} network evaluations per plane" if m["steps"] else ""))
    return f"""# {metadata['name']}

{metadata['description']}

**Task**: {metadata['task']}. **Method**: `--method {m['method']}`, {sampling}.

## Run it

From the bundle folder (elsewhere, add `--bundle_root PATH_TO_BUNDLE`):

```bash
python -m monai.bundle run --config_file configs/inference.json --dataset_dir IN --output_dir OUT
```

`IN` holds NIfTI / NRRD / MHA files and DICOM series folders (any orientation). Each becomes
`OUT/NAME_sr.nii.gz` on the {m['plane']}-plane x{m['factor']} grid, identical voxel for voxel to
`mrisr upsample INPUT --plane {m['plane']} --factor {m['factor']} --method {m['method']}` with the same
seed and settings (mrisr's own plan, normalisation and sampler run it; nothing is re-implemented
in the config). Change settings on the command line, e.g. `--seed 1 --samples 4 --batch_size 4
--device "$torch.device('cpu')"`, or `--self_ensemble true` / `--consistent true` for mrisr's
`--self-ensemble` / `--consistent`. A case that cannot be read is reported in one line and skipped;
the run then ends with exit code 2. `OUT/summary.json` lists every case. Outputs are written
atomically and never replace existing files unless `--overwrite true`.

Needs `mrisr` (with its MONAI dependency) and `fire` for MONAI's command line:
`pip install "mrisr[bundle]"`.

## Fine-tune it

```bash
python -m monai.bundle run --config_file configs/train.json --datalist DATALIST.json \\
    --output_dir runs/finetune --max_steps 1000
```

`DATALIST.json` is an mrisr datalist (`{{"training": [{{"image": "case.nii.gz"}}], "validation": [...]}}`,
docs/training.md of mrisr). The run starts from `models/model.pt`, uses the recipe below with
your data, resumes when run again, and writes `runs/finetune/run/model.safetensors`.

## Verify

```bash
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath SCHEMA.json
```

Offline, pass mrisr's schema (`python -c "import mrisr.bundle as b; print(b.SCHEMA_PATH)"`), a
restatement of the MONAI Bundle Specification's keys and tensor formats; online, MONAI fetches the
model-zoo schema the metadata names (not checked by mrisr, which works offline).

The network takes two inputs, the image channels and the noise level (`network_data_format`);
give the second one to MONAI's shape check:

```bash
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json \
    --config_file configs/inference.json --extra_forward_args "{{'noise_level': 0.5}}"
```

TorchScript: {scripted}

## Data and recipe

{metadata['data_source']}. Training pairs: {degradation}. Trained steps: {m.get('trained_steps')}.

```json
{recipe}
```

## Measured

{_table(metadata.get('eval_metrics') or {})}
## Intended use and limits

{metadata['intended_use']} Two training patients, both from one scanner model: expect less on other
scanners and contrasts (the validation patient is from another scanner model; one-patient models of
this recipe gained +1.9 to +2.2 dB over bicubic in-plane x4 on an unseen patient of the training
scanner and +1.3 dB on the validation patient, mrisr's docs/ablations.md); fine-tune on your own
data (above).

## Licence

See `LICENSE`: code Apache-2.0; weights from TCIA PROSTATEx (CC BY 3.0, attribution given there).
"""
