"""jointcal building blocks: sky geometry and proper motions against astropy, TAN-SIP headers and fits,
association counts, model parameter layout (the reference's test_star / test_ccdImage / test_astrometryModel)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from diffcal._core import _jointcal as J
from diffcal.jointcal import JointcalConfig, JointcalTask, simulate
from diffcal.jointcal.wcs import TanSipWcs, fitTanSip, gnomonicDeproject, gnomonicProject


def test_proper_motion_matches_astropy_space_motion():
    """100-year baseline, 100 random stars (the reference compares with apply_space_motion too)."""
    import astropy.units as u
    from astropy.coordinates import Distance, SkyCoord
    from astropy.time import Time

    rng = np.random.default_rng(1)
    ra, dec = rng.uniform(0, 360, 100), rng.uniform(-80, 80, 100)
    pmra, pmdec = rng.normal(0, 50, 100), rng.normal(0, 50, 100)  # mas/yr, RA component times cos(dec)
    for dt in (100.0, -100.0):
        c = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, pm_ra_cosdec=pmra * u.mas / u.yr, pm_dec=pmdec * u.mas / u.yr,
                     distance=Distance(parallax=1e-3 * u.mas), radial_velocity=0 * u.km / u.s,
                     obstime=Time(2000.0, format="jyear"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ERFA "dubious year" warnings
            moved = c.apply_space_motion(new_obstime=Time(2000.0 + dt, format="jyear"))
        r2, d2 = J.apply_proper_motion(ra, dec, np.radians(pmra / 3.6e6), np.radians(pmdec / 3.6e6), np.full(100, dt))
        sep = SkyCoord(r2 * u.deg, d2 * u.deg).separation(moved).to(u.mas).value
        assert sep.max() < 1e-3  # mas, for motions up to ~17 arcsec


def test_gnomonic_projection_matches_astropy_tan():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [214.87, 52.65]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [1.0, 1.0]  # intermediate world coordinates in degrees = pixel offsets
    rng = np.random.default_rng(0)
    xi, eta = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50)
    ra, dec = gnomonicDeproject(214.87, 52.65, xi, eta)
    ara, adec = w.wcs_pix2world(xi, eta, 1)  # origin 1: pixel value - CRPIX = offset
    np.testing.assert_allclose(ra, ara, atol=1e-11)
    np.testing.assert_allclose(dec, adec, atol=1e-11)
    x2, y2 = gnomonicProject(214.87, 52.65, ra, dec)
    np.testing.assert_allclose(x2, xi, atol=1e-12)
    np.testing.assert_allclose(y2, eta, atol=1e-12)


def test_tan_sip_header_round_trip_and_exact_fit():
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 3] = 2e-6, -1e-6, 3e-10
    b[0, 2], b[2, 1] = -1.5e-6, 4e-10
    w = TanSipWcs((1023.0, 2047.0), [[-5.1e-5, 2e-7], [1e-7, 5.1e-5]], (150.0, 2.0), a, b)
    back = TanSipWcs.fromFitsHeader(w.toFitsHeader())
    x, y = np.array([0.0, 500.0, 2047.0]), np.array([0.0, 3000.0, 4095.0])
    np.testing.assert_allclose(back.pixelToSky(x, y), w.pixelToSky(x, y), rtol=0, atol=1e-12)
    # a polynomial of the SIP order is fitted exactly
    gx, gy = np.meshgrid(np.linspace(0, 2047, 20), np.linspace(0, 4095, 20))
    xi, eta = w.pixelToIwc(gx.ravel(), gy.ravel())
    fit, stats = fitTanSip(gx.ravel(), gy.ravel(), xi, eta, w.crpix, w.crval, 3)
    assert stats["forward_max_deg"] * 3.6e6 < 1e-6
    assert stats["inverse_max_pix"] < 1e-3
    rx, ry = fit.skyToPixel(*fit.pixelToSky(x, y))
    np.testing.assert_allclose(rx, x, atol=1e-6)
    np.testing.assert_allclose(ry, y, atol=1e-6)
    with pytest.raises(ValueError, match="invertible"):
        TanSipWcs((0, 0), [[0, 0], [0, 0]], (0, 0))


def _associations(xs, ys, ccd, nCcd, ra0=150.0, dec0=2.0):
    """Associations over nCcd identical TAN CcdImages (0.2"/px) centred on (ra0, dec0)."""
    scale = 0.2 / 3600.0
    wcs = [J.TanSipWcs([1000.0, 1000.0], [scale, 0.0, 0.0, scale], [ra0, dec0], 0, np.zeros(0), np.zeros(0))
           for _ in range(nCcd)]
    n = len(xs)
    return J.Associations(
        np.arange(nCcd), np.zeros(nCcd, dtype=np.int64), np.tile([0.0, 0.0, 1999.0, 1999.0], (nCcd, 1)), wcs,
        np.full(nCcd, 2020.0), np.full(nCcd, ra0), np.full(nCcd, dec0), np.ones(nCcd), np.zeros(nCcd),
        np.full((nCcd, 6), np.nan), np.asarray(ccd), np.arange(n), np.asarray(xs, float), np.asarray(ys, float),
        np.full(n, 0.05), np.full(n, 0.05), np.full(n, 4.0), np.full(n, 4.0), np.zeros(n), np.full(n, 1e4),
        np.full(n, 100.0)), wcs


def test_association_counts():
    rng = np.random.default_rng(3)
    # 100 stars seen on two CcdImages plus 4 more only on the first: 104 fitted stars
    x = rng.uniform(50, 1950, 104)
    y = rng.uniform(50, 1950, 104)
    xs = np.concatenate([x, x[:100] + 0.01])
    ys = np.concatenate([y, y[:100]])
    ccd = np.concatenate([np.zeros(104, int), np.ones(100, int)])
    assoc, wcs = _associations(xs, ys, ccd, 2)
    assert assoc.associate_catalogs(3.0) == 104
    f = assoc.fitted_arrays()
    assert sorted(np.bincount(f["n_measurements"]).tolist()[1:]) == [4, 100]
    # the catalog itself as reference catalog: every fitted star gets its reference star
    ra, dec = wcs[0].pixel_to_sky(x, y)
    n = len(ra)
    collected = assoc.collect_ref_stars(np.arange(n), ra, dec, np.full(n, 1e-12), np.full(n, 1e-12),
                                        np.full(n, 1e5), np.full(n, 1e3), match_cut_arcsec=3.0)
    assert collected == 104 and assoc.n_fitted_with_ref == 104
    assoc.prepare_fitted_stars(2)
    assert assoc.n_fitted_stars == 104  # singletons kept: they have a reference star
    # two CcdImages that do not overlap: nothing associated
    assoc2, _ = _associations(np.r_[x[:50], x[:50]], np.r_[y[:50], y[:50] + 1000.0], np.r_[np.zeros(50, int),
                                                                                          np.ones(50, int)], 2)
    assert assoc2.associate_catalogs(3.0) >= 90


def test_model_parameter_layout():
    s = simulate(nVisits=3, nDetectors=6, nStars=2500, seed=9, ditherRadius=0.02)
    args = {k: v for k, v in s.runArguments().items() if k != "photometryRefCat"}
    config = JointcalConfig()
    config.doPhotometry = False
    config.astrometryModel = "simple"
    for order, size in ((3, 20), (5, 42)):
        config.astrometrySimpleOrder = order
        state = JointcalTask(config=config).prepareAstrometry(**args)
        blocks = state.model.native.block_arrays()
        assert set(blocks["size"].tolist()) == {size}
        assert blocks["kind"].tolist() == [0] * len(blocks["kind"])
    config.astrometryModel = "constrained"
    config.astrometryVisitOrder = 3
    state = JointcalTask(config=config).prepareAstrometry(**args)
    blocks = state.model.native.block_arrays()
    chips = [i for i, k in enumerate(blocks["kind"]) if k == 1]
    visits = [i for i, k in enumerate(blocks["kind"]) if k == 2]
    assert [int(blocks["size"][i]) for i in chips] == [6] * 6
    assert [int(blocks["size"][i]) for i in visits] == [20] * 3
    # chip blocks sorted by detector id, then visits sorted by visit id; the chip nearest the centre is fixed
    assert blocks["id"][chips].tolist() == sorted(blocks["id"][chips].tolist())
    assert blocks["id"][visits].tolist() == sorted(s.visitSummaries)
    fixed = [int(blocks["id"][i]) for i in chips if blocks["fixed"][i]]
    centres = {d.id: np.hypot(*d.center()) for d in s.camera}
    assert fixed == [min(centres, key=centres.get)]
    # fitted parameters of "Distortions": 6 per free chip + 20 per visit
    fitter = state.fitter
    step = fitter.compute_step("Distortions")
    assert step.size == 5 * 6 + 3 * 20 == fitter.n_model_fit
    assert fitter.compute_step("DistortionsVisit").size == 60
    assert fitter.compute_step("DistortionsChip").size == 30
