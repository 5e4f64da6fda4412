"""Literal, unbatched reference for the three ViT explanations: one image at a time, heads in Python loops,
the forward pass rebuilt from the parameters, and the authors' relevance rules written as they state them
(Z = f(X), S = R / Z, C = ∂Z/∂X·S, R_X = X·C) with autograd for the ∂Z/∂X·S products.

CVPR'21 (Chefer, Gur, Wolf): Ā_b = I + E_h[(∇A_b ⊙ R^{A_b})⁺], C = Ā_1·…·Ā_B applied as C ← Ā_b C.
ICCV'21: R = I; for each block R ← R + E_h[(∇A_b ⊙ A_b)⁺]·R.
Abnar & Zuidema: Ã_b = ½ E_h[A_b] + ½ I, rollout Ã_B·…·Ã_1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def params_timm(model) -> dict:
    """Parameters of a timm/DINO-layout ViT (blocks[i].attn.qkv …) in a neutral dict."""
    blocks = []
    for blk in model.blocks:
        blocks.append(dict(ln1=(blk.norm1.weight, blk.norm1.bias, blk.norm1.eps), qkv=(blk.attn.qkv.weight, blk.attn.qkv.bias),
                           heads=blk.attn.num_heads, scale=blk.attn.scale, proj=(blk.attn.proj.weight, blk.attn.proj.bias),
                           ln2=(blk.norm2.weight, blk.norm2.bias, blk.norm2.eps), fc1=(blk.mlp.fc1.weight, blk.mlp.fc1.bias),
                           fc2=(blk.mlp.fc2.weight, blk.mlp.fc2.bias)))
    head = [(model.head.weight, model.head.bias)] if isinstance(model.head, torch.nn.Linear) else []
    return dict(conv=model.patch_embed.proj, cls=model.cls_token[0, 0], pos=model.pos_embed[0], blocks=blocks,
                norm=(model.norm.weight, model.norm.bias, model.norm.eps), head=head,
                pool=getattr(model, "token_pooling", "cls"))


def params_torchvision(model) -> dict:
    """Parameters of a torchvision VisionTransformer in the same neutral dict."""
    blocks = []
    for blk in model.encoder.layers:
        sa = blk.self_attention
        blocks.append(dict(ln1=(blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps), qkv=(sa.in_proj_weight, sa.in_proj_bias),
                           heads=sa.num_heads, scale=(sa.embed_dim // sa.num_heads) ** -0.5,
                           proj=(sa.out_proj.weight, sa.out_proj.bias), ln2=(blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps),
                           fc1=(blk.mlp[0].weight, blk.mlp[0].bias), fc2=(blk.mlp[3].weight, blk.mlp[3].bias)))
    return dict(conv=model.conv_proj, cls=model.class_token[0, 0], pos=model.encoder.pos_embedding[0], blocks=blocks,
                norm=(model.encoder.ln.weight, model.encoder.ln.bias, model.encoder.ln.eps),
                head=[(model.heads.head.weight, model.heads.head.bias)])


def _linear_relprop(R, x, w):
    """LRP-αβ, α=1 β=0, as the authors' Linear.relprop (activator relevances only)."""
    pw, nw = torch.clamp(w, min=0), torch.clamp(w, max=0)
    px = torch.clamp(x, min=0).detach().requires_grad_(True)
    nx = torch.clamp(x, max=0).detach().requires_grad_(True)
    z1, z2 = F.linear(px, pw), F.linear(nx, nw)
    s = safe_divide(R, z1 + z2)
    c1 = px * torch.autograd.grad(z1, px, s)[0]
    c2 = nx * torch.autograd.grad(z2, nx, s)[0]
    return (c1 + c2).detach()


def _simple_relprop(f, R, *xs):
    xs = [x.detach().requires_grad_(True) for x in xs]
    z = f(*xs)
    s = safe_divide(R, z)
    cs = torch.autograd.grad(z, xs, s)
    return [(x * c).detach() for x, c in zip(xs, cs)]


def _add_relprop(R, a, b):
    ra, rb = _simple_relprop(lambda u, v: u + v, R, a, b)
    a_sum, b_sum = ra.sum(), rb.sum()
    a_fact = safe_divide(a_sum.abs(), a_sum.abs() + b_sum.abs()) * R.sum()
    b_fact = safe_divide(b_sum.abs(), a_sum.abs() + b_sum.abs()) * R.sum()
    return ra * safe_divide(a_fact, ra.sum()), rb * safe_divide(b_fact, rb.sum())


def _clone_relprop(x, r1, r2):
    xx = x.detach().requires_grad_(True)
    z = [xx, xx]
    s = [safe_divide(r1, x), safe_divide(r2, x)]
    c = torch.autograd.grad(z, xx, s)[0]
    return (x * c).detach()


def reference(p: dict, image: Tensor, target: int) -> dict:
    """One image C×H×W: per-block attention maps A_b (h×N×N), gradients, LRP cams, and the three token matrices."""
    conv = p["conv"]
    patches = F.conv2d(image[None], conv.weight, conv.bias, stride=conv.stride)[0]  # D×gh×gw
    tokens = [p["cls"]] + [patches[:, i, j] for i in range(patches.shape[1]) for j in range(patches.shape[2])]
    x = torch.stack(tokens) + p["pos"]
    saved = []
    for blk in p["blocks"]:
        n, d = x.shape
        h = blk["heads"]
        hd = d // h
        u = F.layer_norm(x, (d,), blk["ln1"][0], blk["ln1"][1], blk["ln1"][2])
        qkv = u @ blk["qkv"][0].T + blk["qkv"][1]
        heads_out, A, Q, K, V = [], [], [], [], []
        for j in range(h):
            q = qkv[:, j * hd:(j + 1) * hd]
            k = qkv[:, d + j * hd:d + (j + 1) * hd]
            v = qkv[:, 2 * d + j * hd:2 * d + (j + 1) * hd]
            a = torch.softmax(q @ k.T * blk["scale"], dim=-1)
            A.append(a); Q.append(q); K.append(k); V.append(v)
            heads_out.append(a @ v)
        merged = torch.cat(heads_out, dim=1)
        attn_out = merged @ blk["proj"][0].T + blk["proj"][1]
        x1 = x + attn_out
        w = F.layer_norm(x1, (d,), blk["ln2"][0], blk["ln2"][1], blk["ln2"][2])
        hidden = F.gelu(w @ blk["fc1"][0].T + blk["fc1"][1])
        mlp_out = hidden @ blk["fc2"][0].T + blk["fc2"][1]
        saved.append(dict(x=x, u=u, A=A, Q=Q, K=K, V=V, merged=merged, attn_out=attn_out, x1=x1, w=w, hidden=hidden,
                          mlp_out=mlp_out))
        x = x1 + mlp_out
    mean_pool = p.get("pool", "cls") == "mean"  # norm(mean of patch tokens) instead of norm(tokens)[CLS]
    cls = F.layer_norm(x[1:].mean(dim=0) if mean_pool else x, (x.shape[1],), *p["norm"])
    cls = cls if mean_pool else cls[0]
    feats = [cls]
    out = cls
    for weight, bias in p["head"]:
        out = out @ weight.T + bias
        feats.append(out)
    grads = torch.autograd.grad(out[target], [a for s in saved for a in s["A"]], allow_unused=True)
    per_block = len(saved[0]["A"])
    G = [[(grads[b * per_block + j] if grads[b * per_block + j] is not None else torch.zeros_like(saved[b]["A"][j]))
          .detach() for j in range(per_block)] for b in range(len(saved))]

    # LRP from a one-hot target
    R = torch.zeros_like(out.detach()); R[target] = 1.0
    for (weight, _), inp in zip(reversed(p["head"]), reversed(feats[:-1])):
        R = _linear_relprop(R, inp.detach(), weight.detach())
    R_tok = torch.zeros_like(x.detach())
    if mean_pool:  # RelPropSimple through the average: X_i · ∂mean/∂X_i · R / mean
        r_patches = _simple_relprop(lambda t: t.mean(dim=0), R, x[1:].detach())[0]
        R_tok[1:] = r_patches
    else:
        xcls = feats[0].detach()
        R_tok[0] = xcls * safe_divide(R, xcls)
    R = R_tok
    cams = [None] * len(saved)
    for b in reversed(range(len(saved))):
        s = {k: ([t.detach() for t in v] if isinstance(v, list) else v.detach()) for k, v in saved[b].items()}
        blk = p["blocks"][b]
        r_res, r_mlp = _add_relprop(R, s["x1"], s["mlp_out"])
        r_mlp = _linear_relprop(r_mlp, s["hidden"], blk["fc2"][0].detach())
        r_mlp = _linear_relprop(r_mlp, s["w"], blk["fc1"][0].detach())
        R = _clone_relprop(s["x1"], r_res, r_mlp)
        r_res, r_att = _add_relprop(R, s["x"], s["attn_out"])
        r_merged = _linear_relprop(r_att, s["merged"], blk["proj"][0].detach())
        hd = r_merged.shape[1] // len(s["A"])
        cam_b, rq, rk, rv = [], [], [], []
        for j in range(len(s["A"])):
            ra, rvj = _simple_relprop(lambda a, v: a @ v, r_merged[:, j * hd:(j + 1) * hd], s["A"][j], s["V"][j])
            ra, rvj = ra / 2, rvj / 2
            cam_b.append(ra)
            rqj, rkj = _simple_relprop(lambda q, k: q @ k.T, ra, s["Q"][j], s["K"][j])
            rq.append(rqj / 2); rk.append(rkj / 2); rv.append(rvj)
        cams[b] = cam_b
        r_qkv = torch.cat(rq + rk + rv, dim=1)
        r_in = _linear_relprop(r_qkv, s["u"], blk["qkv"][0].detach())
        R = _clone_relprop(s["x"], r_res, r_in)

    n = saved[0]["x"].shape[0]
    eye = torch.eye(n, dtype=image.dtype)
    # CVPR'21 transformer attribution
    joint = None
    for b in range(len(saved)):
        m = sum((G[b][j] * cams[b][j]).clamp(min=0) for j in range(per_block)) / per_block + eye
        joint = m if joint is None else m @ joint
    # Abnar & Zuidema rollout
    roll = None
    for b in range(len(saved)):
        m = 0.5 * sum(a.detach() for a in saved[b]["A"]) / per_block + 0.5 * eye
        roll = m if roll is None else m @ roll
    # ICCV'21 generic attention
    gen = eye.clone()
    for b in range(len(saved)):
        m = sum((G[b][j] * saved[b]["A"][j].detach()).clamp(min=0) for j in range(per_block)) / per_block
        gen = gen + m @ gen
    return dict(output=out.detach(), transformer_attribution=joint, attention_rollout=roll, generic_attention=gen,
                input_relevance=R, cams=cams, grads=G)
