"""moelab/data/loader.py: the batch loader, its augmentation and the stream loader of byte text."""
import pytest
import torch
import torch.nn.functional as F
from synthetic import numbered_split, sample_ids, write_ag_news, write_sources

from moelab import data
from moelab.data import text
from moelab.data.loader import BatchLoader, StreamLoader, loader_for

# ----------------------------------------------------------------------------------------------
# BatchLoader

def make_loader(split, **kwargs):
    defaults = dict(batch_size=16, mean=(0.0,) * split.images.shape[1], std=(1.0,) * split.images.shape[1],
                    shuffle=True, augment=False, seed=0)
    return data.BatchLoader(split, **{**defaults, **kwargs})


def test_loader_shapes_dtypes_and_length():
    split = numbered_split(50, channels=3)
    loader = make_loader(split, batch_size=16)
    batches = list(loader.iter_epoch(0))
    assert len(loader) == 4 and len(batches) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (16, 3, 4, 4) and y.dtype == torch.int64
    assert len(make_loader(split, batch_size=16, drop_last=True)) == 3
    assert len(list(make_loader(split, batch_size=16, drop_last=True).iter_epoch(0))) == 3


def test_loader_normalises_with_train_stats():
    images = (torch.rand(200, 3, 6, 6) * torch.tensor([60.0, 120.0, 250.0]).view(1, 3, 1, 1)).to(torch.uint8)
    split = data.Split(images, torch.zeros(200, dtype=torch.int64))
    mean, std = data.channel_stats(images)
    x = torch.cat([x for x, _ in make_loader(split, mean=mean, std=std).iter_epoch(0)])
    assert x.mean((0, 2, 3)).tolist() == pytest.approx([0, 0, 0], abs=1e-4)
    assert x.std((0, 2, 3), unbiased=False).tolist() == pytest.approx([1, 1, 1], abs=1e-4)


def test_every_sample_seen_once_per_epoch_and_order_depends_on_epoch():
    split = numbered_split(70)
    loader = make_loader(split, batch_size=8)

    def epoch_ids(epoch):
        return [i for x, _ in loader.iter_epoch(epoch) for i in sample_ids((x * 255).round().to(torch.uint8))]

    e0, e1 = epoch_ids(0), epoch_ids(1)
    assert sorted(e0) == list(range(70)) and sorted(e1) == list(range(70))
    assert e0 != e1 and e0 != list(range(70))
    assert epoch_ids(0) == e0
    fixed = make_loader(split, batch_size=8, shuffle=False)
    for epoch in (0, 5):
        ids = [i for x, _ in fixed.iter_epoch(epoch) for i in sample_ids((x * 255).round().to(torch.uint8))]
        assert ids == list(range(70))


def test_same_seed_same_batches_different_seed_different():
    split = numbered_split(40, channels=3)

    def run(seed):
        return list(make_loader(split, augment=True, seed=seed).iter_epoch(2))

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("start_step", [0, 1, 3, 4])
def test_resume_mid_epoch_yields_the_exact_tail(start_step):
    loader = make_loader(numbered_split(60, channels=3), batch_size=16, augment=True, seed=5)
    full = list(loader.iter_epoch(3))
    tail = list(loader.iter_epoch(3, start_step=start_step))
    assert len(tail) == len(full) - start_step
    for (xf, yf), (xt, yt) in zip(full[start_step:], tail):
        assert torch.equal(xf, xt) and torch.equal(yf, yt)
    with pytest.raises(ValueError):
        next(loader.iter_epoch(3, start_step=5))


def test_loader_augments_only_when_asked():
    split = numbered_split(32, channels=3, size=8)
    plain = torch.cat([x for x, _ in make_loader(split, shuffle=False).iter_epoch(0)])
    assert torch.allclose(plain, split.images.float() / 255, atol=1e-6)
    augmented = torch.cat([x for x, _ in make_loader(split, shuffle=False, augment=True).iter_epoch(0)])
    assert not torch.allclose(augmented, plain, atol=1e-3)


def test_augmentation_differs_between_batches_and_epochs():
    # Identical images everywhere: any difference between batches comes from the augmentation draws.
    image = torch.randint(1, 256, (1, 3, 8, 8), dtype=torch.uint8)
    split = data.Split(image.expand(32, -1, -1, -1).clone(), torch.zeros(32, dtype=torch.int64))
    loader = make_loader(split, shuffle=False, augment=True)
    (a0, _), (a1, _) = loader.iter_epoch(0)
    (b0, _), _ = loader.iter_epoch(1)
    assert not torch.equal(a0, a1) and not torch.equal(a0, b0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    split = numbered_split(50, channels=3)
    cpu = list(make_loader(split, augment=True).iter_epoch(1))
    gpu = list(make_loader(split, augment=True, device="cuda").iter_epoch(1))
    assert gpu[0][0].is_cuda and gpu[0][1].is_cuda
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


# ----------------------------------------------------------------------------------------------
# augment_batch

def reference_augment(x, dy, dx, flip, pad):
    """Slow per-sample crop-and-flip, to check the vectorised gather against."""
    out = []
    for img, oy, ox, f in zip(x, dy.tolist(), dx.tolist(), flip.tolist()):
        padded = F.pad(img, (pad, pad, pad, pad))
        crop = padded[:, oy:oy + img.shape[1], ox:ox + img.shape[2]]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_batch_matches_per_sample_reference(dtype):
    x = torch.randint(1, 256, (64, 3, 7, 9)).to(dtype)  # non-square, and no zeros so padding shows
    out = data.augment_batch(x, torch.Generator().manual_seed(1), pad=3)
    dy, dx, flip = data.draw_augment_params(64, torch.Generator().manual_seed(1), pad=3)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, reference_augment(x, dy, dx, flip, pad=3))
    assert flip.any() and not flip.all() and (dy != 3).any()  # the draw exercised something


def test_augment_output_is_one_of_the_legal_crops():
    # Independent of the helpers: brute-force every crop position and mirror.
    pad, x = 2, torch.randint(1, 256, (20, 2, 5, 5), dtype=torch.uint8)
    out = data.augment_batch(x, torch.Generator().manual_seed(0), pad=pad)
    for img, res in zip(x, out):
        padded = F.pad(img, (pad,) * 4)
        crops = [padded[:, i:i + 5, j:j + 5] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
        assert any(torch.equal(res, c) or torch.equal(res, c.flip(-1)) for c in crops)


def test_augment_pad_zero_only_flips():
    x = torch.randint(0, 256, (400, 1, 4, 6), dtype=torch.uint8)
    out = data.augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 150 < (mirrored & ~same).sum() < 250  # about half are flipped


def test_augment_draws_cover_all_offsets():
    dy, dx, flip = data.draw_augment_params(5000, torch.Generator().manual_seed(0), pad=4)
    assert set(dy.tolist()) == set(range(9)) and set(dx.tolist()) == set(range(9))
    assert 0.45 < flip.float().mean() < 0.55


# ----------------------------------------------------------------------------- the stream loader

def test_stream_loader_windows_are_next_byte_pairs_and_cover_evaluation_once():
    tokens = torch.arange(103, dtype=torch.int64).remainder(256).to(torch.uint8)
    stream = text.Stream(tokens, (tokens % 12).to(torch.uint8))
    train = StreamLoader(stream, 4, 10, shuffle=True, seed=3, steps=5)
    batches = list(train.iter_epoch(0))
    assert len(train) == 5 and len(batches) == 5
    for x, y in batches:
        assert x.shape == y.shape == (4, 10) and x.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)   # the next bytes
        assert int(y.max()) <= 102
    again = list(train.iter_epoch(0, start_step=2))                        # resumable from (seed, epoch, step)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[2:], again))
    assert not torch.equal(torch.cat([b[0] for b in train.iter_epoch(1)]), torch.cat([b[0] for b in batches]))
    evaluation = StreamLoader(stream, 4, 10, shuffle=False, seed=0)
    assert evaluation.windows == 10 and len(evaluation) == 3
    xs, ys, ks = zip(*evaluation.iter_epoch(0))
    x, y, kinds = torch.cat(xs), torch.cat(ys), torch.cat(ks)
    assert torch.equal(x.reshape(-1), torch.arange(100)) and torch.equal(y.reshape(-1), torch.arange(1, 101))
    assert torch.equal(kinds.reshape(-1), torch.arange(100) % 12)          # kinds of the input bytes
    default = StreamLoader(stream, 4, 10, shuffle=True, seed=0)
    assert len(default) == 102 // 40                                      # batches that cover it once


def test_loader_for_picks_the_stream_loader_for_a_language_model_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_sources(tmp_path / "src", 6)
    lm = text.load_language_dataset(f"text:{tmp_path / 'src'}", 16, 0.1)
    assert isinstance(loader_for(lm, lm.train, 4, shuffle=True, seed=0, device="cpu", steps=3), StreamLoader)
    write_ag_news(tmp_path / "ag")
    cls = text.load_classification_dataset(f"csv-text:{tmp_path / 'ag'}", 16, 0.0, seed=0)
    loader = loader_for(cls, cls.test, 2, shuffle=False, seed=0, device="cpu")
    assert isinstance(loader, BatchLoader)
    x, y = next(loader.iter_epoch(0))
    assert x.dtype == torch.int64 and x.shape == (2, 16) and torch.equal(x, cls.test.images[:2].long())


def test_images_tables_and_graphs_visit_their_examples_in_one_epoch_order():
    """One epoch_order serves every loader: with the same (seed, epoch), the n-th example of an image
    split, a table and a set of graphs is visited at the same step, and a resumed epoch is its tail."""
    from moelab.data.graphs import GraphSplit
    from moelab.data.loader import GraphLoader, TableLoader, epoch_order
    from moelab.data.tables import TableSplit

    n, batch = 23, 5
    table = TableSplit(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n), torch.arange(n))
    sizes = torch.ones(n, dtype=torch.int64)                      # one node per graph, no edges
    graphs = GraphSplit.build(torch.zeros(n, 1), sizes, torch.zeros(2, 0, dtype=torch.int64), torch.arange(n),
                              torch.zeros(n, dtype=torch.int64))
    for shuffle in (True, False):
        expected = epoch_order(n, shuffle=shuffle, seed=3, epoch=2, device="cpu").tolist()
        assert sorted(expected) == list(range(n)) and (expected != list(range(n))) == shuffle
        images = [i for x, _ in make_loader(numbered_split(n), batch_size=batch, shuffle=shuffle, seed=3).iter_epoch(2)
                  for i in sample_ids((x * 255).round().to(torch.uint8))]
        rows = torch.cat([y for _, y in TableLoader(table, batch, shuffle=shuffle, seed=3).iter_epoch(2)]).tolist()
        graph_loader = GraphLoader(graphs, batch, shuffle=shuffle, seed=3)
        visited = torch.cat([batch[1] for batch in graph_loader.iter_epoch(2)]).tolist()
        assert images == rows == visited == expected
        tail = torch.cat([batch[1] for batch in graph_loader.iter_epoch(2, start_step=2)]).tolist()
        assert tail == expected[2 * batch:]
    with pytest.raises(ValueError, match="start_step"):
        next(TableLoader(table, batch, shuffle=True, seed=3).iter_epoch(0, start_step=n))
