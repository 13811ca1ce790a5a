"""Issue 17 probe (not a product stage): does a learned per-patch head over a dual memory bank
lift magnetic tile's AU-PRO by the issue's +0.05 with 2 labelled defects per type?

    PYTHONPATH=. .venv/bin/python benchmarks/fewshot_probe.py ../shared/data/magnetic_tile/magnetic_tile 2 0 [PASTE]

Arguments: category folder, shots per defect type (drawn as benchmarks/ablation.py draws them),
seed, and how many held-out goods get a shot's masked region pasted on them (rotated, flipped,
anywhere; 0: none). It fits the product (no PSG) once, builds an abnormal bank from the shots'
NNS-layer features inside their masks (cells at least 75 % inside), and trains small heads on
per-patch features: log NNS distance, log Mahalanobis (pooled to the NNS grid), log distance to
the abnormal bank (leaving a shot's own patches out) and their difference, plus the direction of
the residual to the nearest normal patch. Positives: synthetic defects on the held-out goods
(the self-checking fit's families), the shots' mask cells and the pasted regions; negatives: the
held-out goods and the cells away from the masks. It prints image AUROC / pixel AUROC / AU-PRO on
the test set without the shots for the product map, each head alone, and the product boosted by
it (x (1 + p), x (1 + 4p)). Results: BENCHMARKS.md, "Issue 17 probe".
"""
import json
import sys
import time
from pathlib import Path

import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1])); sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import draw_defects
from model.jobs.dataset import list_images, list_test_set, read_mask
from model.jobs.fit import split_holdout
from model.jobs.progress import silent_progress
from model.jobs.variant import fit_parts
from model.jobs.selection import validation_images
from model.method.config import FitConfig
from model.method.memory_bank import flatten_patches
from model.reporting import metrics
from model.runtime.execution import Timer
from model.runtime.imageio import read_image, resize_rgb

def main() -> None:
    torch.set_num_threads(2)
    data, K, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    S = 256
    config = FitConfig().with_overrides({"psg.enabled": False}).with_scoring("product")
    watch = Timer(torch.device("cpu"))
    fit_files, hold_files = split_holdout(list_images(data / "train" / "good"), config)
    parts = fit_parts(config, fit_files, "cpu", silent_progress, watch, True, True)
    insp = parts.variant(config, watch).inspector("cpu")
    bank = insp.branches.nns
    shots = draw_defects(str(data), K, seed)
    shot_paths = {s.path for s in shots}
    samples, _ = list_test_set(data)
    test = [s for s in samples if s.path not in shot_paths]

    @torch.inference_mode()
    def run(images):
        out = {"f": [], "dn": [], "rn": [], "maha": [], "final": []}
        for i in range(0, len(images), 16):
            x = insp.preprocess(images[i:i+16])
            inp = insp.branch_inputs(x)
            fn = inp["nns"]; b, c, h, w = fn.shape
            q = flatten_patches(fn)
            d2 = torch.addmm(bank.bank_sq.unsqueeze(0), q, bank.bank.T, alpha=-2.0)
            idx = d2.argmin(1)
            r = q - bank.bank[idx]
            out["f"].append(q.view(b, h * w, c)); out["rn"].append(r.view(b, h * w, c))
            out["dn"].append(r.norm(dim=1).view(b, h * w))
            g = insp.branches.gaussian(inp["gaussian"])  # [b, H, W]
            out["maha"].append(F.adaptive_avg_pool2d(g.unsqueeze(1), (h, w)).view(b, h * w))
            out["final"].append(insp.combine(inp))
        res = {k: torch.cat(v) for k, v in out.items()}
        res["hw"] = (h, w)
        return res

    def grid_mask(masks, hw, frac):
        m = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
        return (F.adaptive_avg_pool2d(m, hw).squeeze(1) >= frac).flatten(1)

    t0 = time.time()
    hold = [resize_rgb(read_image(str(f)), S) for f in hold_files]
    vi = validation_images(hold, config)  # synthetic defects on held-out goods
    shot_imgs = [resize_rgb(read_image(str(s.path)), S) for s in shots]
    shot_masks = np.stack([read_mask(s, S) for s in shots]) if shots else np.zeros((0, S, S), bool)
    def paste_shots(goods, rng, n):
        out, masks = [], []
        for k in range(n):
            g = goods[k % len(goods)].copy(); j = rng.integers(len(shot_imgs))
            src, m = shot_imgs[j], shot_masks[j]
            if not m.any():
                continue
            rot = rng.integers(4); flip = rng.integers(2)
            src, m = np.rot90(src, rot), np.rot90(m, rot)
            if flip: src, m = src[:, ::-1], m[:, ::-1]
            ys, xs = np.nonzero(m); y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            h, w = y1 - y0, x1 - x0
            ty, tx = rng.integers(0, S - h + 1), rng.integers(0, S - w + 1)
            patch_m = m[y0:y1, x0:x1]
            region = g[ty:ty + h, tx:tx + w]
            region[patch_m] = src[y0:y1, x0:x1][patch_m]
            mm = np.zeros((S, S), bool); mm[ty:ty + h, tx:tx + w] = patch_m
            out.append(g); masks.append(mm)
        return out, np.stack(masks) if masks else np.zeros((0, S, S), bool)
    G = run(vi.goods); D = run(vi.defects); Sh = run(shot_imgs) if shots else None
    PASTE = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if shots and PASTE:
        pimgs, pmasks = paste_shots(vi.goods, np.random.default_rng(seed), PASTE)
        P = run(pimgs)
    hw = G["hw"]
    # abnormal bank: eroded shot masks (>= 0.75 of the cell inside) -> nns features
    if shots:
        inside = grid_mask(shot_masks, hw, 0.75)
        ab_feats = Sh["f"][inside]; ab_img = torch.arange(len(shots)).unsqueeze(1).expand_as(inside)[inside]
    else:
        ab_feats = torch.zeros(0, G["f"].shape[2]); ab_img = torch.zeros(0, dtype=torch.long)
    print("abnormal bank", ab_feats.shape, "setup", round(time.time()-t0,1), flush=True)

    def dual(R, own=None):
        """d_a and r_a per patch: nearest abnormal-bank vector (excluding patches of the same shot image)."""
        f = R["f"]; b, n, c = f.shape
        if len(ab_feats) == 0:
            return torch.full((b, n), 1e3), torch.zeros(b, n, c)
        da = torch.empty(b, n); ra = torch.empty(b, n, c)
        for i in range(b):
            keep = ab_img != own[i] if own is not None else slice(None)
            A = ab_feats[keep]
            d2 = torch.cdist(f[i], A)
            j = d2.argmin(1)
            da[i] = d2.gather(1, j[:, None]).squeeze(1); ra[i] = f[i] - A[j]
        return da, ra

    def feats(R, own=None):
        da, ra = dual(R, own)
        eps = 1e-6
        scal = torch.stack([R["dn"].clamp_min(eps).log(), R["maha"].clamp_min(eps).log(), da.clamp_min(eps).log(),
                            R["dn"].clamp_min(eps).log() - da.clamp_min(eps).log()], -1)
        return torch.cat([scal, R["rn"] / (R["dn"][..., None] + eps)], -1)  # direction of the residual

    XG = feats(G); XD = feats(D)
    md = grid_mask(vi.defect_masks, hw, 0.5)
    X = [XG.flatten(0, 1), XD[md]]; Y = [torch.zeros(XG.shape[0]*XG.shape[1]), torch.ones(int(md.sum()))]
    if shots:
        XS = feats(Sh, own=torch.arange(len(shots)))
        X += [XS[inside], XS[~grid_mask(shot_masks, hw, 0.01)]]
        Y += [torch.ones(int(inside.sum())), torch.zeros(int((~grid_mask(shot_masks, hw, 0.01)).sum()))]
    if shots and PASTE:
        XP = feats(P); mp = grid_mask(pmasks, hw, 0.5); outside = ~grid_mask(pmasks, hw, 0.01)
        X += [XP[mp], XP[outside]]; Y += [torch.ones(int(mp.sum())), torch.zeros(int(outside.sum()))]
    X = torch.cat(X); Y = torch.cat(Y)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mu) / sd
    pos_w = (Y == 0).sum() / (Y == 1).sum()
    print("train patches", X.shape, "pos", int(Y.sum()), flush=True)

    def train(Xn, Y, hidden, wd=1e-3, steps=300):
        torch.manual_seed(0)
        d = Xn.shape[1]
        net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)) if hidden else torch.nn.Linear(d, 1)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=wd)
        for _ in range(steps):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(net(Xn).squeeze(1), Y, pos_weight=pos_w)
            loss.backward(); opt.step()
        return net

    heads = {"lin": train(Xn, Y, 0), "mlp32": train(Xn, Y, 32)}
    heads_scal = {"lin_scal": train(Xn[:, :4], Y, 0)}

    # A head with context: two 3x3 convolutions over the per-cell features of whole images
    # (cells near a mask's edge are left out of the loss).
    def grids(R, own, target, ignore):
        x = ((feats(R, own) - mu) / sd).permute(0, 2, 1).reshape(-1, X.shape[1], *hw)
        return x, target.float().view(-1, *hw), (~ignore).float().view(-1, *hw)
    none = lambda n: torch.zeros(n, hw[0] * hw[1], dtype=torch.bool)
    sets = [grids(G, None, none(len(vi.goods)), none(len(vi.goods))),
            grids(D, None, md, grid_mask(vi.defect_masks, hw, 0.01) & ~md)]
    if shots:
        sets.append(grids(Sh, torch.arange(len(shots)), inside, grid_mask(shot_masks, hw, 0.01) & ~inside))
    if shots and PASTE:
        sets.append(grids(P, None, mp, ~outside & ~mp))
    CX, CY, CW = (torch.cat(t) for t in zip(*sets))
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(CX.shape[1], 32, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 1, 3, padding=1))
    opt = torch.optim.Adam(conv.parameters(), lr=3e-3, weight_decay=1e-3)
    cpos = ((CY == 0) & (CW > 0)).sum() / ((CY == 1) & (CW > 0)).sum()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(len(CX), (32,), generator=gen)
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(conv(CX[idx]).squeeze(1), CY[idx], weight=CW[idx], pos_weight=cpos)
        loss.backward(); opt.step()
    print("trained", round(time.time()-t0,1), flush=True)

    # test
    timgs = [resize_rgb(read_image(str(s.path)), S) for s in test]
    labels = np.array([s.label for s in test]); tmasks = np.stack([read_mask(s, S) for s in test])
    T = run(timgs); XT = (feats(T) - mu) / sd
    base = T["final"]
    def upmap(logits):
        p = torch.sigmoid(logits).view(-1, 1, *hw)
        up = F.interpolate(p, size=(S, S), mode="bilinear", align_corners=False)
        return insp.combiner.smooth(up).squeeze(1)
    rows = {}
    def report(name, m):
        m = m.numpy(); s = m.reshape(len(m), -1).max(1)
        b = metrics.metric_block(s, labels, m, tmasks)
        rows[name] = b; print(f"{name:22s} " + " / ".join(f"{v:.4f}" for v in b.values()), flush=True)
    report("base", base)
    with torch.no_grad():
        for name, net in {**heads, **heads_scal}.items():
            x = XT if "scal" not in name else XT[..., :4]
            p = upmap(net(x).squeeze(-1))
            report(name + " only", p)
            report(name + " x(1+p)", base * (1 + p))
            report(name + " x(1+4p)", base * (1 + 4 * p))
        xt = XT.permute(0, 2, 1).reshape(-1, X.shape[1], *hw)
        p = upmap(torch.cat([conv(xt[i:i + 64]) for i in range(0, len(xt), 64)]).flatten(1))
        report("conv3x3 only", p)
        report("conv3x3 x(1+p)", base * (1 + p))
        report("conv3x3 x(1+4p)", base * (1 + 4 * p))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
