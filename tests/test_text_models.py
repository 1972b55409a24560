"""DAMSM text and image encoders: shapes, padding/packing behaviour, frozen backbones."""
import pytest
import torch

from t2i_ray.models.text import ImageEncoder, TextEncoder, frozen, set_requires_grad

VOCAB = 30


def _captions(lengths: list[int], T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids 1..VOCAB-1 up to each length, zero ('<end>') padding after it."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), T), generator=g)
    return torch.where(torch.arange(T) < lens.view(-1, 1), ids, 0), lens


# ---------------------------------------------------------------- TextEncoder

def test_text_encoder_shapes_and_config():
    enc = TextEncoder(VOCAB)
    ids, lens = _captions([5, 18, 1, 9], T=18)
    words, sent = enc(ids, lens)
    assert words.shape == (4, 256, 18) and sent.shape == (4, 256)
    assert enc.config == dict(vocab_size=VOCAB, word_dim=300, hidden_per_dir=128, dropout=0.5)
    # The time axis stays T even when no caption uses all of it (total_length=T).
    words, _ = enc(*_captions([3, 2], T=7))
    assert words.shape == (2, 256, 7)
    # Rebuildable from its config (checkpoints).
    clone = TextEncoder(**enc.config)
    clone.load_state_dict(enc.state_dict())


def test_text_encoder_embedding_init_uniform():
    w = TextEncoder(VOCAB).embedding.weight
    assert w.abs().max() <= 0.1 and w.std() > 0.05


def test_padding_tokens_do_not_matter():
    enc = TextEncoder(VOCAB, hidden_per_dir=8).eval()
    ids, lens = _captions([4, 6, 2], T=6)
    words, sent = enc(ids, lens)
    other = ids.clone()
    other[0, 4:] = torch.tensor([7, 8])
    other[2, 2:] = torch.tensor([3, 5, 9, 11])
    words2, sent2 = enc(other, lens)
    assert torch.equal(sent, sent2) and torch.equal(words, words2)
    # Word features past each caption's length are exactly zero.
    assert words[0, :, 4:].abs().max() == 0 and words[2, :, 2:].abs().max() == 0


def test_unsorted_batch_equals_one_caption_at_a_time():
    # enforce_sorted=False must restore the input order of both outputs.
    enc = TextEncoder(VOCAB, hidden_per_dir=8).eval()
    ids, lens = _captions([2, 5, 3, 5], T=5, seed=1)
    words, sent = enc(ids, lens)
    for b, n in enumerate(lens.tolist()):
        w1, s1 = enc(ids[b:b + 1, :n], lens[b:b + 1])
        torch.testing.assert_close(sent[b], s1[0])
        torch.testing.assert_close(words[b, :, :n], w1[0])


def test_sentence_is_final_state_of_both_directions():
    enc = TextEncoder(VOCAB, hidden_per_dir=8).eval()
    ids, lens = _captions([3, 5, 1], T=5, seed=2)
    words, sent = enc(ids, lens)
    for b, n in enumerate(lens.tolist()):
        torch.testing.assert_close(sent[b, :8], words[b, :8, n - 1])  # forward: after the last word
        torch.testing.assert_close(sent[b, 8:], words[b, 8:, 0])  # backward: after the first word


def test_dropout_only_in_train_mode():
    enc = TextEncoder(VOCAB, hidden_per_dir=8)
    ids, lens = _captions([4, 3], T=4)
    torch.manual_seed(0)
    a = enc.train()(ids, lens)[1]
    b = enc(ids, lens)[1]
    assert not torch.allclose(a, b)
    enc.eval()
    assert torch.equal(enc(ids, lens)[1], enc(ids, lens)[1])
    no_drop = TextEncoder(VOCAB, hidden_per_dir=8, dropout=0.0).train()
    assert torch.equal(no_drop(ids, lens)[1], no_drop(ids, lens)[1])


# ---------------------------------------------------------------- ImageEncoder "cnn"

@pytest.mark.parametrize("size", [32, 64, 256])
def test_cnn_image_encoder_shapes(size):
    enc = ImageEncoder(embed_dim=256, backbone="cnn")
    regions, glob = enc(torch.rand(2, 3, size, size) * 2 - 1)
    assert regions.shape == (2, 256, 8, 8) and glob.shape == (2, 256)


def test_cnn_image_encoder_trains_fully_and_passes_gradients_to_images():
    enc = ImageEncoder(embed_dim=16, backbone="cnn")
    images = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    regions, glob = enc(images)
    (regions.square().mean() + glob.square().mean()).backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert images.grad.abs().sum() > 0  # DAMSM/F2R losses on fake images need this path
    assert enc.config == dict(embed_dim=16, backbone="cnn", inception_weights=None)


def test_unknown_backbone_rejected():
    with pytest.raises(ValueError, match="resnet"):
        ImageEncoder(backbone="resnet")


def test_frozen_and_set_requires_grad():
    enc = ImageEncoder(embed_dim=8, backbone="cnn").train()
    assert frozen(enc) is enc
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    set_requires_grad(enc, True)
    assert all(p.requires_grad for p in enc.parameters())


# ---------------------------------------------------------------- ImageEncoder "inception"

def _save_random_inception(path, aux_logits: bool) -> dict:
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    state = inception_v3(weights=None, aux_logits=aux_logits, init_weights=False).state_dict()
    torch.save(state, path)
    return state


def test_inception_image_encoder(tmp_path):
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    state = _save_random_inception(path, aux_logits=False)
    enc = ImageEncoder(embed_dim=256, backbone="inception", inception_weights=str(path)).train()
    # The loaded weights are the file's, the backbone is frozen and stays in eval mode.
    torch.testing.assert_close(enc.local_trunk[0].conv.weight, state["Conv2d_1a_3x3.conv.weight"])
    torch.testing.assert_close(enc.global_trunk[-1].branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    assert not enc.local_trunk.training and not enc.global_trunk.training
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"regions_proj.weight", "global_proj.weight", "global_proj.bias"}
    images = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    regions, glob = enc(images)
    assert regions.shape == (1, 256, 17, 17) and glob.shape == (1, 256)
    assert torch.isfinite(regions).all() and torch.isfinite(glob).all()
    (regions.mean() + glob.mean()).backward()
    assert images.grad is not None and enc.regions_proj.weight.grad is not None


def test_inception_loads_torchvision_file_with_aux_classifier(tmp_path):
    # torchvision's real download also holds AuxLogits.*, which the encoder drops.
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    state = _save_random_inception(path, aux_logits=True)
    assert any(k.startswith("AuxLogits.") for k in state)
    enc = ImageEncoder(backbone="inception", inception_weights=str(path))
    torch.testing.assert_close(enc.local_trunk[-1].branch1x1.conv.weight, state["Mixed_6e.branch1x1.conv.weight"])


@pytest.mark.parametrize("weights", [None, "/nonexistent/inception_v3_google-0cc3c7bd.pth"])
def test_inception_without_weights_names_the_config_key(weights):
    with pytest.raises(FileNotFoundError, match="damsm.inception_weights") as err:
        ImageEncoder(backbone="inception", inception_weights=weights)
    assert "inception_v3_google-0cc3c7bd.pth" in str(err.value)


def test_inception_rejects_a_wrong_weights_file(tmp_path):
    path = tmp_path / "not_inception.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        ImageEncoder(backbone="inception", inception_weights=str(path))
