// Native (C++) cell mappers and the parallel map / map-and-stitch drivers of ImageMapReduce.
//
// A CellMapper processes one cell of the grid (grid.hpp): it reads the input planes over the
// cell's *expanded* box and writes its result over the cell's *inner* box. The drivers call it for
// every cell on all worker threads (parallelFor) with no Python involved, so:
//
//  * process() must be thread-safe: it is const and is called concurrently for different cells;
//    keep per-call scratch on the stack or in thread-local storage. The drivers already use all
//    worker threads across cells, so process() should do its own work serially (calling
//    parallelFor inside it works but oversubscribes the cores);
//  * the input views are read-only and the input is never modified (there are no aliases between
//    the input and the outputs: the drivers allocate separate output buffers);
//  * the output views are pre-filled with NaN (image, variance) and 0 (mask) unless
//    overwritesOutput() returns true, so a pixel the mapper forgets shows up as invalid (NaN,
//    flagged by the reducer) rather than as garbage, and a mapper that leaves the mask alone keeps
//    the input's mask in the stitched result (the reducer starts from it and ORs the cells' masks);
//  * process() must not re-point the output views: the driver checks after the call that each view
//    still covers exactly the inner box and throws std::invalid_argument (naming the cell and its
//    boxes) otherwise;
//  * exceptions thrown by process() propagate to the caller (the first one, after all threads have
//    joined); no partial output is returned.
//
// A mapper that needs more inputs than the exposure being split (e.g. the spatial decorrelation
// needs the science and template images on the same grid) holds read-only views of them as members,
// set at construction, and slices them with CellInput::expandedBox / innerBox (parent coordinates);
// whoever constructs it (the Python binding) must keep the viewed arrays alive while it is used.
//
// Implementing a mapper: derive from CellMapperBase<Derived> and provide
//     template <typename T> void processT(CellInput<T> const&, CellOutput<T>&) const;
// which serves both float32 and float64 exposures.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffcal/grid.hpp"
#include "diffcal/image_view.hpp"
#include "diffcal/stitch.hpp"

namespace diffcal {

/// What a mapper sees of one cell. All views cover `expandedBox`; element [0][0] is the pixel
/// (expandedBox.minX, expandedBox.minY).
template <typename T>
struct CellInput {
    std::int64_t index = 0;  // cell index (grid order: x outer, y inner)
    IntBox innerBox;         // boxes0[index], parent coordinates
    IntBox expandedBox;      // boxes1[index], parent coordinates; contains innerBox
    IntBox fullBBox;         // bbox of the whole exposure
    ImageView<const T> image;
    ImageView<const std::int32_t> mask;
    ImageView<const T> variance;

    /// Offset of the inner box inside the expanded views (columns, rows).
    std::int64_t innerOffsetX() const { return innerBox.minX - expandedBox.minX; }
    std::int64_t innerOffsetY() const { return innerBox.minY - expandedBox.minY; }
    /// The input planes restricted to the inner box.
    ImageView<const T> innerImage() const { return innerOf(image); }
    ImageView<const std::int32_t> innerMask() const { return innerOf(mask); }
    ImageView<const T> innerVariance() const { return innerOf(variance); }

private:
    template <typename V>
    ImageView<V> innerOf(ImageView<V> const& v) const {
        return subView(v, innerOffsetY(), innerOffsetX(), innerBox.height(), innerBox.width());
    }
};

/// Where a mapper writes one cell's result: views over the cell's inner box.
template <typename T>
struct CellOutput {
    ImageView<T> image;
    ImageView<std::int32_t> mask;
    ImageView<T> variance;
};

/// Abstract per-cell operation (see the header comment for the contract).
class CellMapper {
public:
    virtual ~CellMapper() = default;
    virtual void process(CellInput<float> const& input, CellOutput<float>& output) const = 0;
    virtual void process(CellInput<double> const& input, CellOutput<double>& output) const = 0;
    /// True when process() always writes every pixel of all three output planes; the drivers then
    /// skip pre-filling them (an optimisation only).
    virtual bool overwritesOutput() const { return false; }
    /// Short description for logs and error messages.
    virtual std::string name() const = 0;
};

/// CRTP helper: forwards both pixel types to `Derived::processT<T>`.
template <typename Derived>
class CellMapperBase : public CellMapper {
public:
    void process(CellInput<float> const& input, CellOutput<float>& output) const override {
        static_cast<Derived const&>(*this).template processT<float>(input, output);
    }
    void process(CellInput<double> const& input, CellOutput<double>& output) const override {
        static_cast<Derived const&>(*this).template processT<double>(input, output);
    }
};

/// Copies the input's inner box (image, mask, variance) unchanged.
class IdentityCellMapper final : public CellMapperBase<IdentityCellMapper> {
public:
    template <typename T>
    void processT(CellInput<T> const& input, CellOutput<T>& output) const;
    bool overwritesOutput() const override { return true; }
    std::string name() const override { return "IdentityCellMapper"; }
};

/// Copies the inner box and adds `amount` (converted to the pixel type first) to the image plane;
/// mask and variance unchanged. A native twin of the reference tests' AddAmountImageMapper.
class AddConstantCellMapper final : public CellMapperBase<AddConstantCellMapper> {
public:
    explicit AddConstantCellMapper(double amount) : _amount(amount) {}
    template <typename T>
    void processT(CellInput<T> const& input, CellOutput<T>& output) const;
    bool overwritesOutput() const override { return true; }
    std::string name() const override;
    double amount() const { return _amount; }

private:
    double _amount;
};

/// Throws std::invalid_argument unless inner and expanded have the same length and, for every
/// cell, inner[i] is non-empty and inside expanded[i], which is inside fullBBox (message names the
/// cell and its boxes).
void validateCells(IntBox const& fullBBox, std::vector<IntBox> const& inner, std::vector<IntBox> const& expanded);

/// Run `mapper` on every cell in parallel; cell i writes `outputs[i]` (bbox == inner[i]).
/// `input.bbox` is the full exposure bbox.
template <typename T>
void mapCells(CellMapper const& mapper, ConstPlanes<T> const& input, std::vector<IntBox> const& inner,
              std::vector<IntBox> const& expanded, std::vector<MutablePlanes<T>> const& outputs);

/// Map every cell and stitch the results into `output` (bbox == input.bbox) in one streaming pass.
/// The output is produced in chunks of rows (at least the median cell height and ~2^18 pixels); one
/// parallel phase per chunk stitches it (stitch.hpp semantics, cell order) from the buffers of the
/// cells already mapped while mapping the cells that start in the next chunk; buffers no longer
/// needed are recycled. Peak extra memory is the output plus the buffers of the cells overlapping
/// about two chunks. Bit-identical to mapping every cell with mapCells and stitching the results with
/// stitch(), for any thread count.
template <typename T>
StitchStats mapAndStitch(CellMapper const& mapper, ConstPlanes<T> const& input, std::vector<IntBox> const& inner,
                         std::vector<IntBox> const& expanded, MutablePlanes<T> const& output, ReduceOperation op,
                         std::int32_t badBits);

}  // namespace diffcal
