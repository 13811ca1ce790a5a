"""Wiring exploration on cached backbone features (EfficientNet-Lite2, embedded weights).

Computes NNS / Gaussian / product maps for layer and grid variants without re-running the
backbone, with the library's own coreset, memory bank, Gaussian and AMC code, and the
same metrics as ``evaluate``. Used to pick the default wiring (docs/lab/issue-03-core.md).

    .venv/bin/python benchmarks/explore_wiring.py <category folder> 256 SPEC[,SPEC...]

SPEC is one of
    nns:<layers>:<grid layer>:<coreset ratio>:<pool>[:<projection dim>]   e.g. nns:23:2:0.01:3:32
    gauss:<dims>:<grid layer>:<layers>[:<pool>]                             e.g. gauss:72:1:12:3
    prod|<nns spec>|<gauss spec>
Layers are digits of 1-based backbone outputs (strides 4, 8, 16). No coreset cap here.
Features are cached under /tmp (about 200 MB for bottle).
"""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(2)
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from pathlib import Path

from model.jobs.dataset import list_images, list_test_set, read_mask
from model.jobs.fit import split_holdout
from model.method.amc import AnomalyMapCombiner
from model.method.backbone import create_feature_extractor, frozen
from model.method.config import FitConfig
from model.method.coreset import greedy_coreset
from model.method.features import select_dims  # noqa: E402
from model.method.fusion import resize_to
from model.method.gaussian import GaussianAccumulator, GaussianModel
from model.method.memory_bank import MemoryBank, flatten_patches
from model.reporting import metrics
from model.runtime.imageio import preprocess, read_image

data = Path(sys.argv[1]); size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
cache = Path(f'/tmp/featcache_{data.name}_{size}.pt')
if cache.exists():
    C = torch.load(cache)
else:
    net = frozen(create_feature_extractor('tf_efficientnet_lite2', (1,2,3), 'embedded'))
    files = list_images(data/'train'/'good'); fitf, _ = split_holdout(files, FitConfig())
    samples, _ = list_test_set(data)
    def feats(paths):
        out = [[],[],[]]
        with torch.inference_mode():
            for i in range(0, len(paths), 16):
                x = preprocess([read_image(str(p)) for p in paths[i:i+16]], size, [0.5]*3, [0.5]*3)
                for k, f in enumerate(net(x)): out[k].append(f)
        return [torch.cat(o) for o in out]
    C = {'train': feats(fitf), 'test': feats([s.path for s in samples]), 'labels': torch.tensor([s.label for s in samples]),
         'masks': torch.from_numpy(np.stack([read_mask(s, 256) for s in samples]))}
    torch.save(C, cache)
labels = C['labels'].numpy(); masks = C['masks'].numpy()
def evalmaps(final):
    final = final.numpy()
    sc = final.reshape(len(final), -1).max(1)
    return dict(img=round(metrics.auroc(sc, labels),4), pix=round(metrics.auroc(final.ravel(), masks.ravel()),4), pro=round(float(metrics.au_pro(final, masks)),4))
comb = AnomalyMapCombiner(256, 4.0)
def nns_feats(f, layers, stride_idx, pool=3):
    f1, f2, f3 = f; fs = {1: f1, 2: f2, 3: f3}
    size = tuple(fs[stride_idx].shape[-2:])
    x = torch.cat([resize_to(fs[l], size) for l in layers], 1)
    return F.avg_pool2d(x, pool, 1, pool//2, count_include_pad=False) if pool > 1 else x
def nns_map(layers, stride_idx, ratio, pool=3, proj=128):
    tr = nns_feats(C['train'], layers, stride_idx, pool); te = nns_feats(C['test'], layers, stride_idx, pool)
    P = flatten_patches(tr); t = time.time()
    idx = greedy_coreset(P, max(1, round(ratio * P.shape[0])), proj, 0)
    ct = time.time() - t
    mb = MemoryBank(P[idx])
    with torch.inference_mode(): m = torch.cat([mb(te[i:i+8]) for i in range(0, len(te), 8)])
    return m, ct
def gauss_map(dims, stride_idx=2, layers=(1,2,3), reg=0.01, pool=1):
    tr = nns_feats(C['train'], layers, stride_idx, pool); te = nns_feats(C['test'], layers, stride_idx, pool)
    d = select_dims(tr.shape[1], dims, 0); tr, te = tr[:, d], te[:, d]
    acc = GaussianAccumulator(); acc.update(tr); g = GaussianModel(*acc.finalize(reg))
    with torch.inference_mode(): return torch.cat([g(te[i:i+8]) for i in range(0, len(te), 8)])
results = {}
exps = sys.argv[3].split(',') if len(sys.argv) > 3 else ['base']
cachemaps = {}
def get(name, fn):
    if name not in cachemaps: cachemaps[name] = fn()
    return cachemaps[name]
for e in exps:
    t = time.time()
    if e.startswith('nns'):  # nns:layers:stride:ratio:pool
        _, layers, s, r, p, *pj = e.split(':')
        m, ct = get(e, lambda: nns_map(tuple(int(c) for c in layers), int(s), float(r), int(p), int(pj[0]) if pj else 128))
        print(e, evalmaps(comb([m])), 'coreset_s', round(ct, 1), flush=True)
    elif e.startswith('gauss'):  # gauss:dims:stride:layers
        _, dims, s, layers, *gp = e.split(':')
        m = get(e, lambda: gauss_map(int(dims), int(s), tuple(int(c) for c in layers), pool=int(gp[0]) if gp else 1))
        print(e, evalmaps(comb([m])), flush=True)
    elif e.startswith('prod'):  # prod|nnsspec|gaussspec
        _, a, b = e.split('|')
        _, layers, s, r, p, *pj = a.split(':')
        m1, _ = get(a, lambda: nns_map(tuple(int(c) for c in layers), int(s), float(r), int(p), int(pj[0]) if pj else 128))
        _, dims, s2, l2, *gp = b.split(':')
        m2 = get(b, lambda: gauss_map(int(dims), int(s2), tuple(int(c) for c in l2), pool=int(gp[0]) if gp else 1))
        print(e, evalmaps(comb([m1, m2])), flush=True)
