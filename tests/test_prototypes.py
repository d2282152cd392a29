"""k-means prototypes of the training latents (the ``latent`` component's reference)."""

import numpy as np

from anomaly.prototypes import kmeans_prototypes


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-20, 20, size=(4, 3))
    codes = np.concatenate([c + 0.1 * rng.normal(size=(500, 3)) for c in centres])
    return codes, centres


def test_prototypes_find_well_separated_clusters():
    codes, centres = _clusters()

    prototypes = kmeans_prototypes(codes, 4, seed=0)

    distance = np.linalg.norm(centres[:, None, :] - prototypes[None, :, :], axis=-1)
    assert np.all(distance.min(axis=1) < 0.05)  # every true centre has a prototype on it
    assert prototypes.dtype == np.float32 and prototypes.shape == (4, 3)


def test_every_code_is_kept_when_there_are_no_more_codes_than_prototypes():
    codes, _ = _clusters()

    prototypes = kmeans_prototypes(codes[:10], 16, seed=0)

    np.testing.assert_array_equal(prototypes, codes[:10].astype(np.float32))


def test_same_seed_gives_the_same_prototypes_and_another_seed_may_not():
    codes = np.random.default_rng(1).normal(size=(3000, 5))

    first, again = kmeans_prototypes(codes, 64, seed=3), kmeans_prototypes(codes, 64, seed=3)
    other = kmeans_prototypes(codes, 64, seed=4)

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_duplicated_codes_still_give_the_requested_number_of_prototypes():
    codes = np.repeat(np.eye(3), 100, axis=0)  # 3 distinct points, 300 codes

    prototypes = kmeans_prototypes(codes, 8, seed=0)

    assert prototypes.shape == (8, 3)
    assert {tuple(p) for p in prototypes} == {tuple(p) for p in np.eye(3, dtype=np.float32)}
