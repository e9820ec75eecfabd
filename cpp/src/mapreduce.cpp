#include "diffcal/mapreduce.hpp"

#include <algorithm>
#include <limits>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "diffcal/parallel.hpp"

namespace diffcal {

namespace {

template <typename S, typename D>
void copyPlane(ImageView<S> const& src, ImageView<D> const& dst) {
    for (std::ptrdiff_t y = 0; y < dst.height; ++y) {
        auto const* s = src.row(y);
        auto* d = dst.row(y);
        if (src.colStride == 1 && dst.colStride == 1) {
            std::copy(s, s + dst.width, d);
        } else {
            for (std::ptrdiff_t x = 0; x < dst.width; ++x) d[x * dst.colStride] = s[x * src.colStride];
        }
    }
}

template <typename V>
void fillPlane(ImageView<V> const& dst, V value) {
    for (std::ptrdiff_t y = 0; y < dst.height; ++y) {
        V* d = dst.row(y);
        for (std::ptrdiff_t x = 0; x < dst.width; ++x) d[x * dst.colStride] = value;
    }
}

template <typename V>
bool sameView(ImageView<V> const& a, ImageView<V> const& b) {
    return a.data == b.data && a.height == b.height && a.width == b.width && a.rowStride == b.rowStride &&
           a.colStride == b.colStride;
}

/// Run the mapper on cell i, writing `out` (bbox == inner[i]).
template <typename T>
void runCell(CellMapper const& mapper, ConstPlanes<T> const& input, std::int64_t i, IntBox const& inner,
             IntBox const& expanded, MutablePlanes<T> const& out) {
    CellInput<T> in;
    in.index = i;
    in.innerBox = inner;
    in.expandedBox = expanded;
    in.fullBBox = input.bbox;
    std::int64_t const y0 = expanded.minY - input.bbox.minY, x0 = expanded.minX - input.bbox.minX;
    in.image = subView(input.image, y0, x0, expanded.height(), expanded.width());
    in.mask = subView(input.mask, y0, x0, expanded.height(), expanded.width());
    in.variance = subView(input.variance, y0, x0, expanded.height(), expanded.width());
    if (!mapper.overwritesOutput()) {
        T const nan = std::numeric_limits<T>::quiet_NaN();
        fillPlane(out.image, nan);
        fillPlane(out.variance, nan);
        fillPlane<std::int32_t>(out.mask, 0);
    }
    CellOutput<T> o{out.image, out.mask, out.variance};
    mapper.process(in, o);
    if (!sameView(o.image, out.image) || !sameView(o.mask, out.mask) || !sameView(o.variance, out.variance)) {
        std::ostringstream os;
        os << "cell " << i << ": mapper " << mapper.name()
           << " replaced its output views; they must stay the views of the cell's inner box " << inner.str()
           << " (" << inner.height() << " rows x " << inner.width() << " columns; got image (" << o.image.height
           << ", " << o.image.width << "), mask (" << o.mask.height << ", " << o.mask.width << "), variance ("
           << o.variance.height << ", " << o.variance.width << "); expanded box " << expanded.str() << ")";
        throw std::invalid_argument(os.str());
    }
}

/// Owned planes of one cell (the streaming driver's temporary result buffer). Not initialised:
/// runCell pre-fills it unless the mapper overwrites every pixel. Buffers are recycled from cell to
/// cell (see BufferPool), so the storage only grows.
template <typename T>
struct CellBuffer {
    std::int64_t capacity = 0;
    std::unique_ptr<T[]> image, variance;
    std::unique_ptr<std::int32_t[]> mask;
    MutablePlanes<T> planes;
    ConstPlanes<T> cplanes;

    void reset(IntBox const& box) {
        std::int64_t const area = box.area();
        if (area > capacity) {
            image.reset(new T[static_cast<std::size_t>(area)]);
            variance.reset(new T[static_cast<std::size_t>(area)]);
            mask.reset(new std::int32_t[static_cast<std::size_t>(area)]);
            capacity = area;
        }
        std::int64_t const h = box.height(), w = box.width();
        planes = MutablePlanes<T>{box, ImageView<T>::contiguous(image.get(), h, w),
                                  ImageView<std::int32_t>::contiguous(mask.get(), h, w),
                                  ImageView<T>::contiguous(variance.get(), h, w)};
        cplanes = planes.asConst();
    }
};

/// Free cell buffers waiting for reuse (used from one thread only).
template <typename T>
class BufferPool {
public:
    std::unique_ptr<CellBuffer<T>> take(IntBox const& box) {
        std::unique_ptr<CellBuffer<T>> b;
        if (_free.empty()) {
            b = std::make_unique<CellBuffer<T>>();
        } else {
            b = std::move(_free.back());
            _free.pop_back();
        }
        b->reset(box);
        return b;
    }
    void give(std::unique_ptr<CellBuffer<T>> b) { _free.push_back(std::move(b)); }

private:
    std::vector<std::unique_ptr<CellBuffer<T>>> _free;
};

/// Rows per streaming chunk: at least the median cell height, and enough rows for about
/// kChunkPixels output pixels so that there are few parallel phases (each costs a thread start).
constexpr std::int64_t kChunkPixels = std::int64_t(1) << 18;

}  // namespace

template <typename T>
void IdentityCellMapper::processT(CellInput<T> const& input, CellOutput<T>& output) const {
    copyPlane(input.innerImage(), output.image);
    copyPlane(input.innerMask(), output.mask);
    copyPlane(input.innerVariance(), output.variance);
}

template <typename T>
void AddConstantCellMapper::processT(CellInput<T> const& input, CellOutput<T>& output) const {
    T const amount = static_cast<T>(_amount);
    ImageView<const T> const src = input.innerImage();
    for (std::ptrdiff_t y = 0; y < output.image.height; ++y) {
        T const* s = src.row(y);
        T* d = output.image.row(y);
        for (std::ptrdiff_t x = 0; x < output.image.width; ++x) {
            d[x * output.image.colStride] = s[x * src.colStride] + amount;
        }
    }
    copyPlane(input.innerMask(), output.mask);
    copyPlane(input.innerVariance(), output.variance);
}

std::string AddConstantCellMapper::name() const {
    std::ostringstream os;
    os.precision(17);
    os << "AddConstantCellMapper(" << _amount << ")";
    return os.str();
}

void validateCells(IntBox const& fullBBox, std::vector<IntBox> const& inner, std::vector<IntBox> const& expanded) {
    if (inner.size() != expanded.size()) {
        throw std::invalid_argument("the grid has " + std::to_string(inner.size()) + " inner boxes (boxes0) but " +
                                    std::to_string(expanded.size()) + " expanded boxes (boxes1)");
    }
    for (std::size_t i = 0; i < inner.size(); ++i) {
        std::string const cell = "cell " + std::to_string(i) + ": ";
        if (inner[i].empty()) throw std::invalid_argument(cell + "empty inner box");
        if (!fullBBox.contains(expanded[i])) {
            throw std::invalid_argument(cell + "expanded box " + expanded[i].str() +
                                        " is not inside the exposure bbox " + fullBBox.str());
        }
        if (!expanded[i].contains(inner[i])) {
            throw std::invalid_argument(cell + "inner box " + inner[i].str() + " is not inside its expanded box " +
                                        expanded[i].str());
        }
    }
}

template <typename T>
void mapCells(CellMapper const& mapper, ConstPlanes<T> const& input, std::vector<IntBox> const& inner,
              std::vector<IntBox> const& expanded, std::vector<MutablePlanes<T>> const& outputs) {
    input.validate("input exposure");
    validateCells(input.bbox, inner, expanded);
    if (outputs.size() != inner.size()) {
        throw std::invalid_argument("mapCells: " + std::to_string(outputs.size()) + " output buffers for " +
                                    std::to_string(inner.size()) + " cells");
    }
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        if (outputs[i].bbox != inner[i]) {
            throw std::invalid_argument("cell " + std::to_string(i) + ": output buffer box " + outputs[i].bbox.str() +
                                        " differs from the inner box " + inner[i].str());
        }
        outputs[i].validate("output buffer of cell " + std::to_string(i));
    }
    parallelFor(static_cast<std::ptrdiff_t>(inner.size()), [&](std::ptrdiff_t i) {
        auto const k = static_cast<std::size_t>(i);
        runCell(mapper, input, i, inner[k], expanded[k], outputs[k]);
    });
}

template <typename T>
StitchStats mapAndStitch(CellMapper const& mapper, ConstPlanes<T> const& input, std::vector<IntBox> const& inner,
                         std::vector<IntBox> const& expanded, MutablePlanes<T> const& output, ReduceOperation op,
                         std::int32_t badBits) {
    input.validate("input exposure");
    output.validate("output exposure");
    if (output.bbox != input.bbox) {
        throw std::invalid_argument("output bbox " + output.bbox.str() + " differs from the input bbox " +
                                    input.bbox.str());
    }
    validateCells(input.bbox, inner, expanded);
    std::size_t const n = inner.size();
    StitchStats total;
    total.nPatches = static_cast<std::int64_t>(n);
    if (output.bbox.empty()) return total;

    // cells in order of their first row; chunk height = median inner-box height
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return inner[a].minY < inner[b].minY; });
    std::int64_t chunk = 1;
    if (n > 0) {
        std::vector<std::int64_t> heights(n);
        for (std::size_t i = 0; i < n; ++i) heights[i] = inner[i].height();
        std::nth_element(heights.begin(), heights.begin() + static_cast<std::ptrdiff_t>(n / 2), heights.end());
        chunk = std::max<std::int64_t>(1, heights[n / 2]);
    }
    chunk = std::max(chunk, (kChunkPixels + output.bbox.width() - 1) / output.bbox.width());

    std::vector<std::unique_ptr<CellBuffer<T>>> buffers(n);
    BufferPool<T> pool;
    std::vector<std::size_t> live;  // cells with a buffer, kept sorted by cell index
    std::size_t next = 0;
    // cells whose inner box starts at or before row `last`, not yet started; buffers assigned
    auto startCells = [&](std::int64_t last) {
        std::vector<std::size_t> todo;
        while (next < n && inner[order[next]].minY <= last) todo.push_back(order[next++]);
        for (std::size_t i : todo) buffers[i] = pool.take(inner[i]);
        return todo;
    };
    auto mapCell = [&](std::size_t i) {
        runCell(mapper, input, static_cast<std::int64_t>(i), inner[i], expanded[i], buffers[i]->planes);
    };
    // Pipeline: one parallel phase per chunk of rows stitches that chunk (its cells are mapped)
    // while mapping the cells that start in the next chunk.
    std::int64_t y0 = output.bbox.minY;
    std::vector<std::size_t> todo = startCells(std::min(y0 + chunk - 1, output.bbox.maxY));
    parallelFor(static_cast<std::ptrdiff_t>(todo.size()), [&](std::ptrdiff_t k) { mapCell(todo[std::size_t(k)]); });
    while (y0 <= output.bbox.maxY) {
        std::int64_t const y1 = std::min(y0 + chunk - 1, output.bbox.maxY);
        live.insert(live.end(), todo.begin(), todo.end());
        std::sort(live.begin(), live.end());
        std::vector<ConstPlanes<T> const*> patches;
        patches.reserve(live.size());
        for (std::size_t i : live) patches.push_back(&buffers[i]->cplanes);
        detail::RowStitcher<T> rows(y0, y1, patches, input.mask, output, op, badBits);
        todo = startCells(std::min(y1 + chunk, output.bbox.maxY));
        auto const nMap = static_cast<std::ptrdiff_t>(todo.size());
        parallelFor(nMap + rows.nBands(), [&](std::ptrdiff_t k) {
            if (k < nMap) {
                mapCell(todo[std::size_t(k)]);
            } else {
                rows.runBand(k - nMap);
            }
        });
        total.merge(rows.stats());
        live.erase(std::remove_if(live.begin(), live.end(),
                                  [&](std::size_t i) {
                                      if (inner[i].maxY > y1) return false;
                                      pool.give(std::move(buffers[i]));
                                      return true;
                                  }),
                   live.end());
        y0 = y1 + 1;
    }
    return total;
}

template void IdentityCellMapper::processT<float>(CellInput<float> const&, CellOutput<float>&) const;
template void IdentityCellMapper::processT<double>(CellInput<double> const&, CellOutput<double>&) const;
template void AddConstantCellMapper::processT<float>(CellInput<float> const&, CellOutput<float>&) const;
template void AddConstantCellMapper::processT<double>(CellInput<double> const&, CellOutput<double>&) const;
template void mapCells<float>(CellMapper const&, ConstPlanes<float> const&, std::vector<IntBox> const&,
                              std::vector<IntBox> const&, std::vector<MutablePlanes<float>> const&);
template void mapCells<double>(CellMapper const&, ConstPlanes<double> const&, std::vector<IntBox> const&,
                               std::vector<IntBox> const&, std::vector<MutablePlanes<double>> const&);
template StitchStats mapAndStitch<float>(CellMapper const&, ConstPlanes<float> const&, std::vector<IntBox> const&,
                                         std::vector<IntBox> const&, MutablePlanes<float> const&, ReduceOperation,
                                         std::int32_t);
template StitchStats mapAndStitch<double>(CellMapper const&, ConstPlanes<double> const&, std::vector<IntBox> const&,
                                          std::vector<IntBox> const&, MutablePlanes<double> const&, ReduceOperation,
                                          std::int32_t);

}  // namespace diffcal
