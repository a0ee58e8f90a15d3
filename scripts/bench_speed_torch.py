#!/usr/bin/env python3
"""PyTorch reference for `scripts/bench_speed.sh`: seconds per training step of the same 3D RevGAN
as `ct-train train --mode paired --naive` (MODELS.md section 1; training/src/model/ and
training/src/trainer/ are the Burn side), on the CPU, with plain autograd.

One step = one generator step (both directions: conditional PatchGAN BCE + 100 * L1) and one
discriminator step (0.5 * (BCE(real, 1) + BCE(fake, 0)) for each direction), batch 1, Adam 2e-4
(0.5, 0.999), exactly the order of `Trainer::step`. Patches are random: the speed does not depend
on their content.

Usage: bench_speed_torch.py --patch 32 --ngf 32 --ndf 64 --blocks 2 --steps 6 --threads 1
Prints one line per step: "step <k> <seconds>".
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(cin, cout, k, stride=1, pad=0):
    c = nn.Conv3d(cin, cout, k, stride=stride, padding=pad)
    nn.init.normal_(c.weight, 0.0, 0.02)
    nn.init.zeros_(c.bias)
    return c


def inorm(x):
    # InstanceNorm3d without affine parameters or running statistics, eps 1e-5.
    return F.instance_norm(x, eps=1e-5)


class Encoder(nn.Module):
    def __init__(self, ngf):
        super().__init__()
        self.conv_in = conv(1, ngf, 5)
        self.conv_down = conv(ngf, 2 * ngf, 3, stride=2, pad=1)

    def forward(self, x):
        x = F.relu(inorm(self.conv_in(F.pad(x, (2,) * 6, mode="replicate"))))
        return F.relu(inorm(self.conv_down(x)))


class Decoder(nn.Module):
    def __init__(self, ngf):
        super().__init__()
        self.conv_up = nn.ConvTranspose3d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1)
        nn.init.normal_(self.conv_up.weight, 0.0, 0.02)
        nn.init.zeros_(self.conv_up.bias)
        self.conv_out = conv(ngf, 1, 5)

    def forward(self, h):
        x = F.relu(inorm(self.conv_up(h)))
        return torch.tanh(self.conv_out(F.pad(x, (2,) * 6, mode="replicate")))


class Coupling(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = conv(c, c, 3)
        self.conv2 = conv(c, c, 3)
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x):
        x = inorm(x)
        x = F.relu(inorm(self.conv1(F.pad(x, (1,) * 6, mode="replicate"))))
        return self.conv2(F.pad(x, (1,) * 6, mode="replicate"))


class RevBlock(nn.Module):
    def __init__(self, ngf):
        super().__init__()
        self.f = Coupling(ngf)
        self.g = Coupling(ngf)

    def forward(self, x):
        x1, x2 = torch.chunk(x, 2, dim=1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], 1)

    def inverse(self, y):
        y1, y2 = torch.chunk(y, 2, dim=1)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], 1)


class RevGan(nn.Module):
    def __init__(self, ngf, blocks):
        super().__init__()
        self.enc_a, self.dec_a = Encoder(ngf), Decoder(ngf)
        self.enc_b, self.dec_b = Encoder(ngf), Decoder(ngf)
        self.core = nn.ModuleList([RevBlock(ngf) for _ in range(blocks)])

    def a_to_b(self, x):
        h = self.enc_a(x)
        for b in self.core:
            h = b(h)
        return self.dec_b(h)

    def b_to_a(self, x):
        h = self.enc_b(x)
        for b in reversed(self.core):
            h = b.inverse(h)
        return self.dec_a(h)


class Discriminator(nn.Module):
    """PatchGAN, n_layers = 2, conditional (2 input channels)."""

    def __init__(self, cin, ndf):
        super().__init__()
        self.c1 = conv(cin, ndf, 4, 2, 1)
        self.c2 = conv(ndf, 2 * ndf, 4, 2, 1)
        self.c3 = conv(2 * ndf, 4 * ndf, 4, 1, 1)
        self.c4 = conv(4 * ndf, 1, 4, 1, 1)

    def forward(self, x):
        x = F.leaky_relu(self.c1(x), 0.2)
        x = F.leaky_relu(inorm(self.c2(x)), 0.2)
        x = F.leaky_relu(inorm(self.c3(x)), 0.2)
        return self.c4(x)


def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gen = RevGan(a.ngf, a.blocks)
    d_a, d_b = Discriminator(2, a.ndf), Discriminator(2, a.ndf)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-8)
    opt_d = torch.optim.Adam(
        list(d_a.parameters()) + list(d_b.parameters()), lr=2e-4, betas=(0.5, 0.999), eps=1e-8
    )
    n = a.patch
    for k in range(a.steps):
        xa = torch.rand(1, 1, n, n, n) * 2 - 1
        xb = torch.rand(1, 1, n, n, n) * 2 - 1
        t0 = time.perf_counter()
        # Generator step (both directions).
        opt_g.zero_grad(set_to_none=True)
        fake_b = gen.a_to_b(xa)
        fake_a = gen.b_to_a(xb)
        loss_g = (
            bce(d_b(torch.cat([xa, fake_b], 1)), 1.0)
            + 100.0 * F.l1_loss(fake_b, xb)
            + bce(d_a(torch.cat([xb, fake_a], 1)), 1.0)
            + 100.0 * F.l1_loss(fake_a, xa)
        )
        loss_g.backward()
        opt_g.step()
        # Discriminator step.
        opt_d.zero_grad(set_to_none=True)
        fb, fa = fake_b.detach(), fake_a.detach()
        loss_d = 0.5 * (bce(d_b(torch.cat([xa, xb], 1)), 1.0) + bce(d_b(torch.cat([xa, fb], 1)), 0.0))
        loss_d = loss_d + 0.5 * (
            bce(d_a(torch.cat([xb, xa], 1)), 1.0) + bce(d_a(torch.cat([xb, fa], 1)), 0.0)
        )
        loss_d.backward()
        opt_d.step()
        print(f"step {k + 1} {time.perf_counter() - t0:.4f}", flush=True)


if __name__ == "__main__":
    main()
