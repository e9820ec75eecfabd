// Photometric models: construction, evaluation, error transform, calibration and validation.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>

#include "diffcal/jointcal/photometry.hpp"

namespace diffcal::jointcal {

namespace {

constexpr int kMaxChebyshevOrder = 20;
constexpr int kMaxChebyshevParams = (kMaxChebyshevOrder + 1) * (kMaxChebyshevOrder + 2) / 2;
constexpr double kMagPerLn = 2.5 / 2.302585092994045684;  // 2.5 / ln(10)

double abMagToNJy(double mag) { return 3631e9 * std::pow(10.0, -0.4 * mag); }

std::string ccdName(CcdImage const& c) {
    std::ostringstream s;
    s << "visit " << c.visit << ", detector " << c.detector;
    return s.str();
}

void chebyshevValues(int order, double x, double* t) {
    t[0] = 1.0;
    if (order >= 1) t[1] = x;
    for (int k = 2; k <= order; ++k) t[k] = 2.0 * x * t[k - 1] - t[k - 2];
}

}  // namespace

void evalChebyshevBasis(int order, double u, double v, double* out) {
    double tx[kMaxChebyshevOrder + 1], ty[kMaxChebyshevOrder + 1];
    chebyshevValues(order, u, tx);
    chebyshevValues(order, v, ty);
    int k = 0;
    for (int j = 0; j <= order; ++j)
        for (int i = 0; i + j <= order; ++i) out[k++] = tx[i] * ty[j];
}

double chebyshevIntegral(int k, double a, double b) {
    // antiderivative of T_k: T_0 -> x; T_1 -> x^2 / 2; T_k -> (T_{k+1}/(k+1) - T_{k-1}/(k-1)) / 2
    auto anti = [k](double x) {
        if (k == 0) return x;
        if (k == 1) return 0.5 * x * x;
        double t[kMaxChebyshevOrder + 2];
        chebyshevValues(k + 1, x, t);
        return 0.5 * (t[k + 1] / (k + 1) - t[k - 1] / (k - 1));
    };
    if (k < 0 || k > kMaxChebyshevOrder) throw std::invalid_argument("chebyshevIntegral: degree out of range");
    return anti(b) - anti(a);
}

PhotometryModel PhotometryModel::makeSimple(Associations const& assoc, bool magnitude, double errorPedestal) {
    PhotometryModel m;
    m._kind = magnitude ? PhotometryModelKind::SimpleMagnitude : PhotometryModelKind::SimpleFlux;
    m._ccds = assoc.ccdImages();
    m._pedestal = errorPedestal;
    for (std::size_t c = 0; c < m._ccds.size(); ++c) {
        CcdImage const& ccd = m._ccds[c];
        if (!(ccd.calibMean > 0.0) || !std::isfinite(ccd.calibMean))
            throw std::invalid_argument("PhotometryModel: the input calibrationMean of (" + ccdName(ccd) +
                                        ") is not a positive finite number");
        PhotometryBlock b;
        b.kind = PhotometryBlock::Ccd;
        b.id = std::int64_t(c);
        b.offset = int(c);
        b.size = 1;
        m._blocks.push_back(b);
        m._ccdBlocks.push_back({int(c), -1});
        m._params.push_back(magnitude ? nJyToAbMag(ccd.calibMean) : ccd.calibMean);
    }
    return m;
}

PhotometryModel PhotometryModel::makeConstrained(Associations const& assoc, bool magnitude, int visitOrder,
                                                 std::array<double, 4> const& focalBox, double errorPedestal) {
    if (visitOrder < 0 || visitOrder > kMaxChebyshevOrder)
        throw std::invalid_argument("PhotometryModel: photometryVisitOrder must be in [0, " +
                                    std::to_string(kMaxChebyshevOrder) + "], got " + std::to_string(visitOrder));
    if (!(focalBox[2] > focalBox[0]) || !(focalBox[3] > focalBox[1]))
        throw std::invalid_argument("PhotometryModel: the focal-plane box is empty");
    PhotometryModel m;
    m._kind = magnitude ? PhotometryModelKind::ConstrainedMagnitude : PhotometryModelKind::ConstrainedFlux;
    m._ccds = assoc.ccdImages();
    m._focalBox = focalBox;
    m._pedestal = errorPedestal;
    std::map<std::int64_t, std::size_t> firstOfChip;  // detector id -> first CcdImage (input order)
    std::map<std::int64_t, int> visits;
    for (std::size_t c = 0; c < m._ccds.size(); ++c) {
        CcdImage const& ccd = m._ccds[c];
        if (!ccd.hasFocal)
            throw std::invalid_argument("PhotometryModel: (" + ccdName(ccd) +
                                        ") has no focal-plane geometry; the constrained models need the camera");
        if (!(ccd.calibMean > 0.0) || !std::isfinite(ccd.calibMean))
            throw std::invalid_argument("PhotometryModel: the input calibrationMean of (" + ccdName(ccd) +
                                        ") is not a positive finite number");
        firstOfChip.emplace(ccd.detector, c);
        visits.emplace(ccd.visit, 0);
    }
    // fixed chip: detector centre closest to the focal-plane origin (smallest id on ties)
    std::int64_t fixedChip = 0;
    double best = std::numeric_limits<double>::infinity();
    for (auto const& [id, c] : firstOfChip) {
        CcdImage const& ccd = m._ccds[c];
        double const cx = 0.5 * (ccd.bbox[0] + ccd.bbox[2]), cy = 0.5 * (ccd.bbox[1] + ccd.bbox[3]);
        auto const& p = ccd.pixToFocal;
        double const fx = p[0] * cx + p[1] * cy + p[4], fy = p[2] * cx + p[3] * cy + p[5];
        double const d = std::hypot(fx, fy);
        if (d < best) {
            best = d;
            fixedChip = id;
        }
    }
    std::map<std::int64_t, int> chipBlock;
    for (auto const& [id, c] : firstOfChip) {
        PhotometryBlock b;
        b.kind = PhotometryBlock::Chip;
        b.id = id;
        b.offset = int(m._params.size());
        b.size = 1;
        b.fixed = id == fixedChip;
        chipBlock[id] = int(m._blocks.size());
        m._blocks.push_back(b);
        double const cm = m._ccds[c].calibMean;
        m._params.push_back(magnitude ? nJyToAbMag(cm) : cm);
    }
    int const nCheb = nChebyshevParams(visitOrder);
    for (auto& [id, blk] : visits) {
        PhotometryBlock b;
        b.kind = PhotometryBlock::Visit;
        b.id = id;
        b.order = visitOrder;
        b.offset = int(m._params.size());
        b.size = nCheb;
        blk = int(m._blocks.size());
        m._blocks.push_back(b);
        for (int k = 0; k < nCheb; ++k) m._params.push_back((!magnitude && k == 0) ? 1.0 : 0.0);
    }
    for (auto const& ccd : m._ccds) m._ccdBlocks.push_back({chipBlock[ccd.detector], visits[ccd.visit]});
    return m;
}

PhotometryModel::PhotometryModel(PhotometryModelKind kind, std::vector<PhotometryBlock> blocks,
                                 std::vector<std::array<int, 2>> ccdBlocks, std::vector<CcdImage> ccds,
                                 std::array<double, 4> focalBox, std::vector<double> params, double errorPedestal)
    : _kind(kind),
      _blocks(std::move(blocks)),
      _ccdBlocks(std::move(ccdBlocks)),
      _ccds(std::move(ccds)),
      _focalBox(focalBox),
      _params(std::move(params)),
      _pedestal(errorPedestal) {
    if (_ccdBlocks.size() != _ccds.size()) throw std::invalid_argument("PhotometryModel: one block pair per CcdImage");
    for (auto const& b : _blocks) {
        if (b.offset < 0 || b.size < 1 || std::size_t(b.offset + b.size) > _params.size())
            throw std::invalid_argument("PhotometryModel: block outside the parameter vector");
        if (b.kind == PhotometryBlock::Visit &&
            (b.order < 0 || b.order > kMaxChebyshevOrder || b.size != nChebyshevParams(b.order)))
            throw std::invalid_argument("PhotometryModel: inconsistent Chebyshev block");
    }
    for (auto const& cb : _ccdBlocks) {
        if (cb[0] < 0 || std::size_t(cb[0]) >= _blocks.size() || cb[1] >= int(_blocks.size()) ||
            (isConstrained() && cb[1] < 0))
            throw std::invalid_argument("PhotometryModel: CcdImage block index out of range");
    }
}

void PhotometryModel::freezeErrorTransform() {
    _errParams = _params;
    _frozen = true;
}

void PhotometryModel::focalToUnit(double xf, double yf, double& u, double& v) const {
    u = (2.0 * xf - (_focalBox[0] + _focalBox[2])) / (_focalBox[2] - _focalBox[0]);
    v = (2.0 * yf - (_focalBox[1] + _focalBox[3])) / (_focalBox[3] - _focalBox[1]);
}

double PhotometryModel::value(std::size_t ccd, double const* p, double instFlux, double instMag, double xFocal,
                              double yFocal, double* dA, double* dB) const {
    auto const& cb = _ccdBlocks[ccd];
    PhotometryBlock const& a = _blocks[std::size_t(cb[0])];
    double const pa = p[a.offset];
    switch (_kind) {
        case PhotometryModelKind::SimpleFlux:
            if (dA) dA[0] = instFlux;
            return pa * instFlux;
        case PhotometryModelKind::SimpleMagnitude:
            if (dA) dA[0] = 1.0;
            return instMag + pa;
        default:
            break;
    }
    PhotometryBlock const& b = _blocks[std::size_t(cb[1])];
    double basis[kMaxChebyshevParams];
    double u, v;
    focalToUnit(xFocal, yFocal, u, v);
    evalChebyshevBasis(b.order, u, v, basis);
    double t = 0.0;
    for (int k = 0; k < b.size; ++k) t += p[b.offset + k] * basis[k];
    if (_kind == PhotometryModelKind::ConstrainedFlux) {
        if (dA) dA[0] = t * instFlux;
        if (dB)
            for (int k = 0; k < b.size; ++k) dB[k] = pa * basis[k] * instFlux;
        return pa * t * instFlux;
    }
    if (dA) dA[0] = 1.0;
    if (dB)
        for (int k = 0; k < b.size; ++k) dB[k] = basis[k];
    return instMag + pa + t;
}

double PhotometryModel::sigma(std::size_t ccd, double instFlux, double instFluxErr, double instMagErr, double xFocal,
                              double yFocal) const {
    double const fluxErr = _pedestal > 0.0 ? std::hypot(instFluxErr, _pedestal * instFlux) : instFluxErr;
    switch (_kind) {
        case PhotometryModelKind::SimpleFlux: {
            double const s = errorParams()[std::size_t(_blocks[std::size_t(_ccdBlocks[ccd][0])].offset)];
            return std::abs(s) * fluxErr;
        }
        case PhotometryModelKind::SimpleMagnitude:
            return _pedestal > 0.0 ? std::hypot(instMagErr, _pedestal) : instMagErr;
        case PhotometryModelKind::ConstrainedFlux: {
            // c_err * T_err * fluxErr: the error transform evaluated for a unit flux
            double const ct = value(ccd, errorParams().data(), 1.0, 0.0, xFocal, yFocal);
            return std::abs(ct) * fluxErr;
        }
        case PhotometryModelKind::ConstrainedMagnitude:
            return kMagPerLn * fluxErr / instFlux;
    }
    return std::numeric_limits<double>::quiet_NaN();
}

double PhotometryModel::calibration(std::size_t ccd, double x, double y) const {
    if (ccd >= _ccds.size()) throw std::out_of_range("PhotometryModel::calibration: CcdImage index out of range");
    auto const& p = _ccds[ccd].pixToFocal;
    double xf = 0.0, yf = 0.0;
    if (_ccds[ccd].hasFocal) {
        xf = p[0] * x + p[1] * y + p[4];
        yf = p[2] * x + p[3] * y + p[5];
    }
    double const v = value(ccd, _params.data(), 1.0, 0.0, xf, yf);
    return isMagnitude() ? abMagToNJy(v) : v;
}

bool PhotometryModel::validate(std::int64_t ndof, std::string& message) const {
    message.clear();
    if (ndof < 0) {
        message = "ndof=" + std::to_string(ndof) + " < 0 (too many parameters for the number of measurements)";
        return false;
    }
    for (std::size_t c = 0; c < _ccds.size(); ++c) {
        CcdImage const& ccd = _ccds[c];
        double const xs[3] = {ccd.bbox[0], 0.5 * (ccd.bbox[0] + ccd.bbox[2]), ccd.bbox[2]};
        double const ys[3] = {ccd.bbox[1], 0.5 * (ccd.bbox[1] + ccd.bbox[3]), ccd.bbox[3]};
        for (double x : xs) {
            for (double y : ys) {
                double xf = 0.0, yf = 0.0;
                if (ccd.hasFocal) {
                    auto const& p = ccd.pixToFocal;
                    xf = p[0] * x + p[1] * y + p[4];
                    yf = p[2] * x + p[3] * y + p[5];
                }
                double const v = value(c, _params.data(), 1.0, 0.0, xf, yf);
                if (!(v > 0.0) || !std::isfinite(v)) {
                    std::ostringstream s;
                    s << "the photometric model is not positive on (" << ccdName(ccd) << "): value " << v
                      << (isMagnitude() ? " mag" : " nJy/count") << " for a unit instrumental flux at pixel (" << x
                      << ", " << y << ")";
                    message = s.str();
                    return false;
                }
            }
        }
    }
    return true;
}

}  // namespace diffcal::jointcal
