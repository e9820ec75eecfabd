// Non-owning strided 2-D views of pixel arrays (row-major [y][x] indexing, strides in elements).
//
// The Python bindings build these directly over numpy buffers, so the core never copies an
// input array and never needs to know where the memory came from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace diffcal {

template <typename T>
struct ImageView {
    T* data = nullptr;
    std::ptrdiff_t height = 0;     // number of rows (y)
    std::ptrdiff_t width = 0;      // number of columns (x)
    std::ptrdiff_t rowStride = 0;  // elements between (y, x) and (y + 1, x)
    std::ptrdiff_t colStride = 1;  // elements between (y, x) and (y, x + 1)

    ImageView() = default;
    ImageView(T* data_, std::ptrdiff_t height_, std::ptrdiff_t width_, std::ptrdiff_t rowStride_,
              std::ptrdiff_t colStride_ = 1)
        : data(data_), height(height_), width(width_), rowStride(rowStride_), colStride(colStride_) {
        if (height < 0 || width < 0) throw std::invalid_argument("ImageView: negative dimensions");
        if (data == nullptr && height * width > 0) throw std::invalid_argument("ImageView: null data");
    }

    /// A contiguous row-major view of a buffer of height*width elements.
    static ImageView contiguous(T* data_, std::ptrdiff_t height_, std::ptrdiff_t width_) {
        return ImageView(data_, height_, width_, width_, 1);
    }

    std::ptrdiff_t size() const { return height * width; }
    bool empty() const { return size() == 0; }
    T& operator()(std::ptrdiff_t y, std::ptrdiff_t x) const { return data[y * rowStride + x * colStride]; }
    T* row(std::ptrdiff_t y) const { return data + y * rowStride; }

    /// Hint the CPU to fetch row y into cache (contiguous rows only; no effect on results). Rows
    /// of a cell are short pieces of long image rows, which hardware prefetchers do not foresee.
    void prefetchRow(std::ptrdiff_t y) const {
        if (colStride != 1 || y < 0 || y >= height) return;
        char const* p = reinterpret_cast<char const*>(row(y));
        std::ptrdiff_t const bytes = width * std::ptrdiff_t(sizeof(T));
        for (std::ptrdiff_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o);
    }

    /// Same memory, read-only element type.
    operator ImageView<const T>() const { return ImageView<const T>(data, height, width, rowStride, colStride); }
};

/// Throw std::invalid_argument unless the two views have the same shape.
template <typename A, typename B>
void requireSameShape(ImageView<A> const& a, ImageView<B> const& b, char const* aName, char const* bName) {
    if (a.height != b.height || a.width != b.width) {
        throw std::invalid_argument(std::string(aName) + " shape (" + std::to_string(a.height) + ", " +
                                    std::to_string(a.width) + ") differs from " + bName + " shape (" +
                                    std::to_string(b.height) + ", " + std::to_string(b.width) + ")");
    }
}

}  // namespace diffcal
