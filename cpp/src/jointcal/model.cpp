#include "diffcal/jointcal/model.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "diffcal/parallel.hpp"

namespace diffcal::jointcal {

namespace {

std::string ccdName(CcdImage const& c) {
    return "(visit " + std::to_string(c.visit) + ", detector " + std::to_string(c.detector) + ")";
}

/// Number of in-fit measurements per CcdImage.
std::vector<std::int64_t> countInFit(Associations const& assoc) {
    auto const& ccds = assoc.ccdImages();
    auto const& m = assoc.measured();
    std::vector<std::int64_t> n(ccds.size(), 0);
    for (std::size_t c = 0; c < ccds.size(); ++c)
        for (std::int64_t k = ccds[c].measBegin; k < ccds[c].measEnd; ++k) n[c] += m.inFit[std::size_t(k)] ? 1 : 0;
    return n;
}

void setNormalisation(CcdMapping& map, std::array<double, 4> const& bbox) {
    double const w = bbox[2] - bbox[0], h = bbox[3] - bbox[1];
    map.x0 = 0.5 * (bbox[0] + bbox[2]);
    map.y0 = 0.5 * (bbox[1] + bbox[3]);
    map.sx = w > 0 ? 2.0 / w : 1.0;
    map.sy = h > 0 ? 2.0 / h : 1.0;
}

/// Visits in order of first appearance -> tangent point = CRVAL of the first CcdImage of the visit.
void makeVisits(Associations const& assoc, std::vector<bool> const& active, std::vector<std::int64_t>& ids,
                std::vector<Gnomonic>& tps, std::map<std::int64_t, int>& index) {
    auto const& ccds = assoc.ccdImages();
    // sorted visit ids among active ccds
    for (std::size_t c = 0; c < ccds.size(); ++c)
        if (active[c]) index.emplace(ccds[c].visit, 0);
    ids.clear();
    for (auto& kv : index) {
        kv.second = int(ids.size());
        ids.push_back(kv.first);
    }
    tps.assign(ids.size(), Gnomonic());
    std::vector<bool> seen(ids.size(), false);
    for (std::size_t c = 0; c < ccds.size(); ++c) {
        if (!active[c]) continue;
        int const v = index[ccds[c].visit];
        if (!seen[std::size_t(v)]) {
            tps[std::size_t(v)] = Gnomonic(ccds[c].wcs.crval[0], ccds[c].wcs.crval[1]);
            seen[std::size_t(v)] = true;
        }
    }
}

}  // namespace

int AstrometryModel::maxOrder() const {
    int o = 0;
    for (auto const& b : _blocks) o = std::max(o, b.order);
    return o;
}

AstrometryModel AstrometryModel::makeSimple(Associations const& assoc, int order, bool useInputWcs, LogBuffer& log) {
    if (order < 0 || order > kMaxPolyOrder)
        throw std::invalid_argument("simple astrometry model: order must be in [0, " + std::to_string(kMaxPolyOrder) + "]");
    auto const& ccds = assoc.ccdImages();
    auto const nIn = countInFit(assoc);
    std::vector<bool> active(ccds.size());
    for (std::size_t c = 0; c < ccds.size(); ++c) active[c] = nIn[c] > 0;
    AstrometryModel m;
    m._kind = AstrometryModelKind::Simple;
    std::map<std::int64_t, int> visitIndex;
    makeVisits(assoc, active, m._visitIds, m._visitTp, visitIndex);
    m._mappings.assign(ccds.size(), CcdMapping());
    int offset = 0;
    for (std::size_t c = 0; c < ccds.size(); ++c) {
        if (!active[c]) {
            log.warn("CcdImage " + ccdName(ccds[c]) + " has no measured star in the fit: no astrometric mapping");
            continue;
        }
        int o = order;
        while (o > 0 && nPolyParams(o) > 2 * nIn[c]) --o;
        if (o != order)
            log.warn("Reduced the fitted polynomial order of CcdImage " + ccdName(ccds[c]) + " from " +
                     std::to_string(order) + " to " + std::to_string(o) + " (only " + std::to_string(nIn[c]) +
                     " measured stars); higher-order terms stay at their initial values");
        MappingBlock b;
        b.kind = MappingBlock::Ccd;
        b.id = std::int64_t(c);
        b.order = useInputWcs ? order : o;
        b.fitOrder = o;
        b.offset = offset;
        b.size = nPolyParams(b.order);
        offset += b.size;
        CcdMapping& map = m._mappings[c];
        map.blockA = int(m._blocks.size());
        map.visitIndex = visitIndex[ccds[c].visit];
        setNormalisation(map, ccds[c].bbox);
        m._blocks.push_back(b);
    }
    m._params.assign(std::size_t(offset), 0.0);
    // initialisation
    std::vector<std::string> errors(ccds.size());
    parallelFor(std::ptrdiff_t(ccds.size()), [&](std::ptrdiff_t ci) {
        auto const c = std::size_t(ci);
        CcdMapping const& map = m._mappings[c];
        if (map.blockA < 0) return;
        MappingBlock const& b = m._blocks[std::size_t(map.blockA)];
        double* coef = m._params.data() + b.offset;
        int const nm = nMonomials(b.order);
        if (!useInputWcs) {
            // identity in normalised pixels: out = u, v
            if (b.order >= 1) {
                coef[1] = 1.0;
                coef[nm + 2] = 1.0;
            }
            return;
        }
        int const ng = 32;
        std::vector<double> u, v, X, Y;
        u.reserve(ng * ng);
        Gnomonic const& tp = m._visitTp[std::size_t(map.visitIndex)];
        Gnomonic const own(ccds[c].wcs.crval[0], ccds[c].wcs.crval[1]);
        for (int j = 0; j < ng; ++j) {
            for (int i = 0; i < ng; ++i) {
                double const x = ccds[c].bbox[0] + (ccds[c].bbox[2] - ccds[c].bbox[0]) * i / (ng - 1.0);
                double const y = ccds[c].bbox[1] + (ccds[c].bbox[3] - ccds[c].bbox[1]) * j / (ng - 1.0);
                double xi, eta, ra, dec, tx, ty;
                ccds[c].wcs.pixelToIwc(x, y, xi, eta);
                own.deproject(xi, eta, ra, dec);
                if (!tp.project(ra, dec, tx, ty)) continue;
                u.push_back((x - map.x0) * map.sx);
                v.push_back((y - map.y0) * map.sy);
                X.push_back(tx);
                Y.push_back(ty);
            }
        }
        try {
            auto const fit = fitPolyMapping(b.order, int(u.size()), u.data(), v.data(), X.data(), Y.data());
            std::copy(fit.begin(), fit.end(), coef);
        } catch (std::exception const& e) {
            errors[c] = e.what();
        }
    });
    for (std::size_t c = 0; c < ccds.size(); ++c)
        if (!errors[c].empty())
            throw std::runtime_error("Cannot initialise the mapping of " + ccdName(ccds[c]) + " from its WCS: " + errors[c]);
    return m;
}

AstrometryModel AstrometryModel::makeConstrained(Associations const& assoc, int chipOrder, int visitOrder,
                                                 double focalScale, LogBuffer& log) {
    if (chipOrder < 0 || chipOrder > kMaxPolyOrder || visitOrder < 0 || visitOrder > kMaxPolyOrder)
        throw std::invalid_argument("constrained astrometry model: orders must be in [0, " +
                                    std::to_string(kMaxPolyOrder) + "]");
    if (chipOrder < 1) throw std::invalid_argument("constrained astrometry model: chip order must be >= 1");
    auto const& ccds = assoc.ccdImages();
    auto const nIn = countInFit(assoc);
    std::vector<bool> active(ccds.size());
    for (std::size_t c = 0; c < ccds.size(); ++c) {
        active[c] = nIn[c] > 0;
        if (!active[c])
            log.warn("CcdImage " + ccdName(ccds[c]) + " has no measured star in the fit: no astrometric mapping");
        else if (!ccds[c].hasFocal)
            throw std::invalid_argument("constrained astrometry model: no camera geometry (pixel -> focal plane) for " +
                                        ccdName(ccds[c]) + "; pass a camera or use the simple model");
    }
    AstrometryModel m;
    m._kind = AstrometryModelKind::Constrained;
    std::map<std::int64_t, int> visitIndex;
    makeVisits(assoc, active, m._visitIds, m._visitTp, visitIndex);
    // chips: first CcdImage of each detector provides the frame and the camera transform
    std::map<std::int64_t, std::size_t> chipFirst;
    for (std::size_t c = 0; c < ccds.size(); ++c)
        if (active[c]) chipFirst.emplace(ccds[c].detector, c);
    if (chipFirst.empty()) {
        m._mappings.assign(ccds.size(), CcdMapping());
        m._focalScale = focalScale > 0 ? focalScale : 1.0;
        return m;
    }
    // focal scale and the fixed chip (centre closest to the focal-plane origin)
    double maxAbs = 0.0, bestD2 = std::numeric_limits<double>::infinity();
    std::int64_t fixedChip = chipFirst.begin()->first;
    for (auto const& kv : chipFirst) {
        CcdImage const& c = ccds[kv.second];
        auto const& p = c.pixToFocal;
        for (int corner = 0; corner < 4; ++corner) {
            double const x = (corner & 1) ? c.bbox[2] : c.bbox[0];
            double const y = (corner & 2) ? c.bbox[3] : c.bbox[1];
            maxAbs = std::max({maxAbs, std::abs(p[0] * x + p[1] * y + p[4]), std::abs(p[2] * x + p[3] * y + p[5])});
        }
        double const xc = 0.5 * (c.bbox[0] + c.bbox[2]), yc = 0.5 * (c.bbox[1] + c.bbox[3]);
        double const fx = p[0] * xc + p[1] * yc + p[4], fy = p[2] * xc + p[3] * yc + p[5];
        double const d2 = fx * fx + fy * fy;
        if (d2 < bestD2) {
            bestD2 = d2;
            fixedChip = kv.first;
        }
    }
    m._focalScale = focalScale > 0 ? focalScale : (maxAbs > 0 ? maxAbs : 1.0);
    int offset = 0;
    std::map<std::int64_t, int> chipBlock;
    for (auto const& kv : chipFirst) {
        MappingBlock b;
        b.kind = MappingBlock::Chip;
        b.id = kv.first;
        b.order = chipOrder;
        b.offset = offset;
        b.size = nPolyParams(chipOrder);
        b.fixed = kv.first == fixedChip;
        offset += b.size;
        chipBlock[kv.first] = int(m._blocks.size());
        m._blocks.push_back(b);
    }
    std::vector<int> visitBlock(m._visitIds.size());
    for (std::size_t v = 0; v < m._visitIds.size(); ++v) {
        MappingBlock b;
        b.kind = MappingBlock::Visit;
        b.id = m._visitIds[v];
        b.order = visitOrder;
        b.offset = offset;
        b.size = nPolyParams(visitOrder);
        offset += b.size;
        visitBlock[v] = int(m._blocks.size());
        m._blocks.push_back(b);
    }
    m._params.assign(std::size_t(offset), 0.0);
    m._mappings.assign(ccds.size(), CcdMapping());
    for (std::size_t c = 0; c < ccds.size(); ++c) {
        if (!active[c]) continue;
        CcdMapping& map = m._mappings[c];
        map.blockA = chipBlock[ccds[c].detector];
        map.visitIndex = visitIndex[ccds[c].visit];
        map.blockB = visitBlock[std::size_t(map.visitIndex)];
        setNormalisation(map, ccds[chipFirst[ccds[c].detector]].bbox);
    }
    // chips: fit the camera pixel -> focal transform on a 50x50 grid (normalised pixels)
    for (auto const& kv : chipFirst) {
        CcdImage const& c = ccds[kv.second];
        MappingBlock const& b = m._blocks[std::size_t(chipBlock[kv.first])];
        CcdMapping const& map = m._mappings[kv.second];
        int const ng = 50;
        std::vector<double> u, v, X, Y;
        for (int j = 0; j < ng; ++j) {
            for (int i = 0; i < ng; ++i) {
                double const x = c.bbox[0] + (c.bbox[2] - c.bbox[0]) * i / (ng - 1.0);
                double const y = c.bbox[1] + (c.bbox[3] - c.bbox[1]) * j / (ng - 1.0);
                auto const& p = c.pixToFocal;
                u.push_back((x - map.x0) * map.sx);
                v.push_back((y - map.y0) * map.sy);
                X.push_back(p[0] * x + p[1] * y + p[4]);
                Y.push_back(p[2] * x + p[3] * y + p[5]);
            }
        }
        auto const fit = fitPolyMapping(b.order, int(u.size()), u.data(), v.data(), X.data(), Y.data());
        std::copy(fit.begin(), fit.end(), m._params.begin() + b.offset);
    }
    // visits: identity focal (mm) -> TP (deg), i.e. out = focalScale * w in normalised focal coordinates
    for (int vb : visitBlock) {
        MappingBlock const& b = m._blocks[std::size_t(vb)];
        int const nm = nMonomials(b.order);
        if (b.order >= 1) {
            m._params[std::size_t(b.offset + 1)] = m._focalScale;
            m._params[std::size_t(b.offset + nm + 2)] = m._focalScale;
        }
    }
    log.info("Constrained astrometry model: " + std::to_string(chipFirst.size()) + " chips (detector " +
             std::to_string(fixedChip) + " fixed), " + std::to_string(m._visitIds.size()) + " visits, " +
             std::to_string(offset) + " parameters");
    return m;
}

AstrometryModel::AstrometryModel(AstrometryModelKind kind, std::vector<MappingBlock> blocks,
                                 std::vector<CcdMapping> mappings, std::vector<std::int64_t> visitIds,
                                 std::vector<double> visitRa, std::vector<double> visitDec, double focalScale,
                                 std::vector<double> params)
    : _kind(kind),
      _blocks(std::move(blocks)),
      _mappings(std::move(mappings)),
      _visitIds(std::move(visitIds)),
      _focalScale(focalScale),
      _params(std::move(params)) {
    if (visitRa.size() != _visitIds.size() || visitDec.size() != _visitIds.size())
        throw std::invalid_argument("AstrometryModel: visit arrays have different lengths");
    for (std::size_t v = 0; v < _visitIds.size(); ++v) _visitTp.emplace_back(visitRa[v], visitDec[v]);
    if (!(focalScale > 0)) throw std::invalid_argument("AstrometryModel: focalScale must be > 0");
    int total = 0;
    for (auto const& b : _blocks) {
        if (b.order < 0 || b.order > kMaxPolyOrder || b.size != nPolyParams(b.order) || b.offset != total ||
            b.fitOrder > b.order)
            throw std::invalid_argument("AstrometryModel: inconsistent mapping block");
        total += b.size;
    }
    if (std::size_t(total) != _params.size())
        throw std::invalid_argument("AstrometryModel: parameter vector has " + std::to_string(_params.size()) +
                                    " entries, blocks need " + std::to_string(total));
    for (auto const& m : _mappings) {
        if (m.blockA < -1 || m.blockA >= int(_blocks.size()) || m.blockB < -1 || m.blockB >= int(_blocks.size()))
            throw std::invalid_argument("AstrometryModel: mapping refers to a missing block");
        if (m.blockA >= 0 && (m.visitIndex < 0 || m.visitIndex >= int(_visitIds.size())))
            throw std::invalid_argument("AstrometryModel: mapping refers to a missing visit");
        if (kind == AstrometryModelKind::Constrained && (m.blockA >= 0) != (m.blockB >= 0))
            throw std::invalid_argument("AstrometryModel: constrained mapping needs a chip and a visit block");
    }
}

void AstrometryModel::transform(std::size_t ccd, double const* P, double x, double y, double* out,
                                double* jacPix) const {
    CcdMapping const& map = _mappings[ccd];
    double work[6 * ((kMaxPolyOrder + 1) * (kMaxPolyOrder + 2) / 2)];
    double const u = (x - map.x0) * map.sx, v = (y - map.y0) * map.sy;
    MappingBlock const& a = _blocks[std::size_t(map.blockA)];
    if (_kind == AstrometryModelKind::Simple) {
        evalPolyMapping(a.order, P + a.offset, u, v, out, jacPix, work);
        if (jacPix) {
            jacPix[0] *= map.sx;
            jacPix[1] *= map.sy;
            jacPix[2] *= map.sx;
            jacPix[3] *= map.sy;
        }
        return;
    }
    MappingBlock const& b = _blocks[std::size_t(map.blockB)];
    double f[2], jc[4], jv[4];
    evalPolyMapping(a.order, P + a.offset, u, v, f, jacPix ? jc : nullptr, work);
    double const s = 1.0 / _focalScale;
    evalPolyMapping(b.order, P + b.offset, f[0] * s, f[1] * s, out, jacPix ? jv : nullptr, work);
    if (jacPix) {
        // d out/d pixel = Jv * s * Jc * diag(sx, sy)
        double const m00 = s * (jv[0] * jc[0] + jv[1] * jc[2]), m01 = s * (jv[0] * jc[1] + jv[1] * jc[3]);
        double const m10 = s * (jv[2] * jc[0] + jv[3] * jc[2]), m11 = s * (jv[2] * jc[1] + jv[3] * jc[3]);
        jacPix[0] = m00 * map.sx;
        jacPix[1] = m01 * map.sy;
        jacPix[2] = m10 * map.sx;
        jacPix[3] = m11 * map.sy;
    }
}

void AstrometryModel::transformBatch(std::size_t ccd, double const* P, double const* x, double const* y, double* out0,
                                     double* out1, double (*jacPix)[kPolyBatch]) const {
    constexpr int B = kPolyBatch;
    CcdMapping const& map = _mappings[ccd];
    double u[B], v[B];
    for (int j = 0; j < B; ++j) {
        u[j] = (x[j] - map.x0) * map.sx;
        v[j] = (y[j] - map.y0) * map.sy;
    }
    MappingBlock const& a = _blocks[std::size_t(map.blockA)];
    if (_kind == AstrometryModelKind::Simple) {
        evalPolyMappingBatch(a.order, P + a.offset, u, v, out0, out1, jacPix);
        for (int j = 0; j < B; ++j) {
            jacPix[0][j] *= map.sx;
            jacPix[1][j] *= map.sy;
            jacPix[2][j] *= map.sx;
            jacPix[3][j] *= map.sy;
        }
        return;
    }
    MappingBlock const& b = _blocks[std::size_t(map.blockB)];
    double f0[B], f1[B], jc[4][B], jv[4][B];
    evalPolyMappingBatch(a.order, P + a.offset, u, v, f0, f1, jc);
    double const s = 1.0 / _focalScale;
    for (int j = 0; j < B; ++j) {
        f0[j] *= s;
        f1[j] *= s;
    }
    evalPolyMappingBatch(b.order, P + b.offset, f0, f1, out0, out1, jv);
    for (int j = 0; j < B; ++j) {
        // d out/d pixel = Jv * s * Jc * diag(sx, sy), as transform
        double const m00 = s * (jv[0][j] * jc[0][j] + jv[1][j] * jc[2][j]);
        double const m01 = s * (jv[0][j] * jc[1][j] + jv[1][j] * jc[3][j]);
        double const m10 = s * (jv[2][j] * jc[0][j] + jv[3][j] * jc[2][j]);
        double const m11 = s * (jv[2][j] * jc[1][j] + jv[3][j] * jc[3][j]);
        jacPix[0][j] = m00 * map.sx;
        jacPix[1][j] = m01 * map.sy;
        jacPix[2][j] = m10 * map.sx;
        jacPix[3][j] = m11 * map.sy;
    }
}

void AstrometryModel::linearChangeBatch(std::size_t ccd, double const* const* lin, double const* dCoefA,
                                        double const* dCoefB, double* dOut0, double* dOut1) const {
    constexpr int B = kPolyBatch;
    CcdMapping const& map = _mappings[ccd];
    for (int j = 0; j < B; ++j) dOut0[j] = dOut1[j] = 0.0;
    double t0[B], t1[B], q0[B], q1[B];
    if (map.blockA >= 0 && dCoefA) {
        for (int j = 0; j < B; ++j) {
            t0[j] = lin[j][0];
            t1[j] = lin[j][1];
        }
        evalPolyValuesBatch(_blocks[std::size_t(map.blockA)].effectiveFitOrder(), dCoefA, t0, t1, q0, q1);
        if (_kind == AstrometryModelKind::Simple) {
            for (int j = 0; j < B; ++j) {
                dOut0[j] += q0[j];
                dOut1[j] += q1[j];
            }
        } else {
            for (int j = 0; j < B; ++j) {
                double const* l = lin[j];
                dOut0[j] += l[4] * q0[j] + l[5] * q1[j];
                dOut1[j] += l[6] * q0[j] + l[7] * q1[j];
            }
        }
    }
    if (map.blockB >= 0 && dCoefB) {
        for (int j = 0; j < B; ++j) {
            t0[j] = lin[j][2];
            t1[j] = lin[j][3];
        }
        evalPolyValuesBatch(_blocks[std::size_t(map.blockB)].effectiveFitOrder(), dCoefB, t0, t1, q0, q1);
        for (int j = 0; j < B; ++j) {
            dOut0[j] += q0[j];
            dOut1[j] += q1[j];
        }
    }
}

void AstrometryModel::transformWithDerivatives(std::size_t ccd, double const* P, double x, double y, double* out,
                                               double* jacPix, double* dA, double* dB, double* work,
                                               double* lin) const {
    CcdMapping const& map = _mappings[ccd];
    double const u = (x - map.x0) * map.sx, v = (y - map.y0) * map.sy;
    if (lin) {
        lin[0] = u;
        lin[1] = v;
    }
    MappingBlock const& a = _blocks[std::size_t(map.blockA)];
    int const nmA = nMonomials(a.order);
    double* monoA = work;  // evalPolyMapping with jac puts monomials first
    if (_kind == AstrometryModelKind::Simple) {
        evalPolyMapping(a.order, P + a.offset, u, v, out, jacPix, monoA);
        jacPix[0] *= map.sx;
        jacPix[1] *= map.sy;
        jacPix[2] *= map.sx;
        jacPix[3] *= map.sy;
        // dA: column k = (m_k, 0), column nm + k = (0, m_k)
        for (int k = 0; k < nmA; ++k) {
            dA[2 * k] = monoA[k];
            dA[2 * k + 1] = 0.0;
            dA[2 * (nmA + k)] = 0.0;
            dA[2 * (nmA + k) + 1] = monoA[k];
        }
        return;
    }
    MappingBlock const& b = _blocks[std::size_t(map.blockB)];
    int const nmB = nMonomials(b.order);
    double* monoB = work + 3 * nMonomials(a.order);
    double f[2], jc[4], jv[4];
    evalPolyMapping(a.order, P + a.offset, u, v, f, jc, monoA);
    double const s = 1.0 / _focalScale;
    evalPolyMapping(b.order, P + b.offset, f[0] * s, f[1] * s, out, jv, monoB);
    double const m00 = s * (jv[0] * jc[0] + jv[1] * jc[2]), m01 = s * (jv[0] * jc[1] + jv[1] * jc[3]);
    double const m10 = s * (jv[2] * jc[0] + jv[3] * jc[2]), m11 = s * (jv[2] * jc[1] + jv[3] * jc[3]);
    jacPix[0] = m00 * map.sx;
    jacPix[1] = m01 * map.sy;
    jacPix[2] = m10 * map.sx;
    jacPix[3] = m11 * map.sy;
    if (lin) {
        lin[2] = f[0] * s;
        lin[3] = f[1] * s;
        lin[4] = s * jv[0];
        lin[5] = s * jv[1];
        lin[6] = s * jv[2];
        lin[7] = s * jv[3];
    }
    // visit block: monomials of the normalised focal position
    for (int k = 0; k < nmB; ++k) {
        dB[2 * k] = monoB[k];
        dB[2 * k + 1] = 0.0;
        dB[2 * (nmB + k)] = 0.0;
        dB[2 * (nmB + k) + 1] = monoB[k];
    }
    // chip block: d out / d(chip x-coef k) = s * Jv[:,0] * m_k ; y-coef: s * Jv[:,1] * m_k
    double const c0x = s * jv[0], c0y = s * jv[2], c1x = s * jv[1], c1y = s * jv[3];
    for (int k = 0; k < nmA; ++k) {
        dA[2 * k] = c0x * monoA[k];
        dA[2 * k + 1] = c0y * monoA[k];
        dA[2 * (nmA + k)] = c1x * monoA[k];
        dA[2 * (nmA + k) + 1] = c1y * monoA[k];
    }
}

}  // namespace diffcal::jointcal
