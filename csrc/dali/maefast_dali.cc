// DALI operators of maefast's decode-and-crop loader (a DALI plugin, built and loaded on first use by
// maefast/data/dali_plugin.py against the installed DALI).
//
//   fn.maefast_png_crops(path_0, ..., path_{C-1}, anchors[, augment], crop_size=s, channels=C, dtype=...,
//                        height=H, width=W)
//   fn.maefast_packed_crops(shard_path, row, anchors[, augment], crop_size=s, channels=[...], dtype=...,
//                           image_shape=[C_stored, H, W])
//   fn.maefast_read_image(path, dtype=..., height=H, width=W): the file's bytes, for DALI's decoders
//
// Each sample is one image; the output sample is (K, C, s, s): its K crops at anchors (K, 2) int32 (top,
// left), each transposed / flipped as augment (K, 3) uint8 says (maefast.data.plan.apply_augment).
// PNG: every channel file is read and decoded once (csrc/decode/png.h), all crops cut from the plane.
// Packed: the shard (.npy of shape (N, C, H, W)) is memory-mapped once per operator and each crop
// copies only its own rows. Work is spread over DALI's thread pool per (image, channel) or per image.
// Every operator checks each file against the dataset's declared size and dtype (csrc/decode/header.h)
// and refuses, naming the file, whatever differs: nothing is cropped from a larger image or converted.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../decode/crops.h"
#include "../decode/header.h"
#include "../decode/png.h"
#include "dali/pipeline/operator/operator.h"

namespace maefast_dali {

using ::dali::CPUBackend;
using ::dali::DALIDataType;
using ::dali::OpSpec;
using ::dali::OutputDesc;
using ::dali::TensorListShape;
using ::dali::Workspace;

std::string path_of(const ::dali::ConstSampleView<CPUBackend>& sample) {
  const char* chars = static_cast<const char*>(sample.raw_data());
  return std::string(chars, chars + sample.shape().num_elements());
}

size_t file_size(const std::string& path) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode))
    throw maefast::decode::DecodeError(path + ": missing or unreadable file");
  return static_cast<size_t>(info.st_size);
}

// Reads exactly `size` bytes of the file (its size when it was stat'ed) into `out`.
void read_file(const std::string& path, uint8_t* out, size_t size) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) throw maefast::decode::DecodeError(path + ": missing or unreadable file");
  if (size && std::fread(out, 1, size, file.get()) != size)
    throw maefast::decode::DecodeError(path + ": read failed (the file changed while it was read?)");
}

void read_file(const std::string& path, std::vector<uint8_t>& bytes) {
  bytes.resize(file_size(path));
  read_file(path, bytes.data(), bytes.size());
}

// The dataset's declared image: arguments height, width and dtype of an operator.
maefast::decode::ImageSpec image_spec(const OpSpec& spec, int bytes_per_pixel) {
  maefast::decode::ImageSpec image;
  image.height = spec.GetArgument<int>("height");
  image.width = spec.GetArgument<int>("width");
  image.bytes_per_pixel = bytes_per_pixel;
  return image;
}

// Throws "<path>: expected <spec>, found <what the header says>" when they differ.
void check_file(const std::string& path, const maefast::decode::ImageSpec& image, const uint8_t* data, size_t size) {
  try {
    image.check(maefast::decode::image_header(data, size));
  } catch (const maefast::decode::DecodeError& error) {
    throw maefast::decode::DecodeError(path + ": " + error.what());
  }
}

int element_size(DALIDataType type) {
  if (type == DALI_UINT8) return 1;
  if (type == DALI_UINT16) return 2;
  throw std::invalid_argument("maefast crops: dtype must be UINT8 or UINT16");
}

// Anchors (K, 2) and optional augment flags (K, 3) of one sample.
struct CropPlan {
  const int32_t* anchors = nullptr;
  const uint8_t* augment = nullptr;
  int count = 0;
};

template <typename T>
void copy_crops(const T* plane, int64_t height, int64_t width, const CropPlan& plan, int size, int channel, int channels,
                T* out, const std::string& what) {
  for (int k = 0; k < plan.count; ++k) {
    int64_t y = plan.anchors[2 * k], x = plan.anchors[2 * k + 1];
    if (y < 0 || x < 0 || y + size > height || x + size > width) {
      throw maefast::decode::DecodeError(what + ": crop at (" + std::to_string(y) + ", " + std::to_string(x) +
                                         ") of size " + std::to_string(size) + " lies outside the " +
                                         std::to_string(height) + "x" + std::to_string(width) + " image");
    }
    const uint8_t* flags = plan.augment ? plan.augment + 3 * k : nullptr;
    T* target = out + (static_cast<int64_t>(k) * channels + channel) * size * size;
    maefast::decode::copy_crop(plane, width, y, x, size, flags && flags[0], flags && flags[1], flags && flags[2], target);
  }
}

// Shared by both operators: reads the anchors / augment inputs and sizes the outputs (K, C, s, s).
class CropOperator : public ::dali::Operator<CPUBackend> {
 public:
  explicit CropOperator(const OpSpec& spec)
      : ::dali::Operator<CPUBackend>(spec),
        crop_size_(spec.GetArgument<int>("crop_size")),
        dtype_(spec.GetArgument<DALIDataType>("dtype")),
        augment_(spec.GetArgument<bool>("augment")) {
    element_size(dtype_);
  }

 protected:
  virtual int first_plan_input() const = 0;
  virtual int num_channels() const = 0;

  bool SetupImpl(std::vector<OutputDesc>& outputs, const Workspace& ws) override {
    const auto& anchors = ws.Input<CPUBackend>(first_plan_input());
    int samples = anchors.num_samples();
    TensorListShape<> shape(samples, 4);
    for (int s = 0; s < samples; ++s) {
      auto sample_shape = anchors.tensor_shape(s);
      if (sample_shape.size() != 2 || sample_shape[1] != 2)
        throw std::invalid_argument("maefast crops: anchors must be (K, 2) per sample");
      if (augment_) {
        auto flags = ws.Input<CPUBackend>(first_plan_input() + 1).tensor_shape(s);
        if (flags.size() != 2 || flags[0] != sample_shape[0] || flags[1] != 3)
          throw std::invalid_argument("maefast crops: augment must be (K, 3) per sample");
      }
      shape.set_tensor_shape(s, {sample_shape[0], num_channels(), crop_size_, crop_size_});
    }
    outputs.resize(1);
    outputs[0] = {shape, dtype_};
    return true;
  }

  CropPlan plan(const Workspace& ws, int sample) const {
    const auto& anchors = ws.Input<CPUBackend>(first_plan_input());
    CropPlan plan;
    plan.anchors = anchors[sample].data<int32_t>();
    plan.count = static_cast<int>(anchors.tensor_shape(sample)[0]);
    if (augment_) plan.augment = ws.Input<CPUBackend>(first_plan_input() + 1)[sample].data<uint8_t>();
    return plan;
  }

  int crop_size_;
  DALIDataType dtype_;
  bool augment_;
};

class PngCrops : public CropOperator {
 public:
  explicit PngCrops(const OpSpec& spec)
      : CropOperator(spec), channels_(spec.GetArgument<int>("channels")), image_(image_spec(spec, element_size(dtype_))) {}

 protected:
  int first_plan_input() const override { return channels_; }
  int num_channels() const override { return channels_; }

  void RunImpl(Workspace& ws) override {
    auto& output = ws.Output<CPUBackend>(0);
    auto& pool = ws.GetThreadPool();
    const int samples = output.num_samples();
    for (int s = 0; s < samples; ++s) {
      for (int c = 0; c < channels_; ++c) {
        pool.AddWork([&, s, c](int) {
          thread_local maefast::decode::PngDecoder decoder;
          thread_local std::vector<uint8_t> bytes;
          const std::string path = path_of(ws.Input<CPUBackend>(c)[s]);
          read_file(path, bytes);
          check_file(path, image_, bytes.data(), bytes.size());
          maefast::decode::PngInfo png;
          try {
            png = decoder.decode(bytes.data(), bytes.size());
          } catch (const maefast::decode::DecodeError& error) {
            throw maefast::decode::DecodeError(path + ": " + error.what());
          }
          CropPlan crops = plan(ws, s);
          void* out = output[s].raw_mutable_data();
          if (png.bytes_per_pixel == 1)
            copy_crops(decoder.pixels(), png.height, png.width, crops, crop_size_, c, channels_,
                       static_cast<uint8_t*>(out), path);
          else
            copy_crops(reinterpret_cast<const uint16_t*>(decoder.pixels()), png.height, png.width, crops, crop_size_, c,
                       channels_, static_cast<uint16_t*>(out), path);
        });
      }
    }
    pool.RunAll();
  }

 private:
  int channels_;
  maefast::decode::ImageSpec image_;
};

// A read-only memory map of one .npy shard of shape (N, C, H, W), uint8 or uint16, C order; (C, H, W)
// must be the dataset's `image_shape`.
class MappedShard {
 public:
  MappedShard(const std::string& path, int itemsize, const std::vector<int64_t>& image_shape) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw maefast::decode::DecodeError(path + ": missing or unreadable shard");
    struct stat info;
    if (::fstat(fd, &info) != 0 || info.st_size < 16) {
      ::close(fd);
      throw maefast::decode::DecodeError(path + ": not a .npy shard (too small)");
    }
    size_ = static_cast<size_t>(info.st_size);
    void* data = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (data == MAP_FAILED) throw maefast::decode::DecodeError(path + ": cannot memory-map the shard");
    base_ = static_cast<const uint8_t*>(data);
    try {
      parse_header(itemsize, image_shape);
    } catch (...) {
      ::munmap(data, size_);
      throw;
    }
  }
  ~MappedShard() { ::munmap(const_cast<uint8_t*>(base_), size_); }
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  const uint8_t* plane(int64_t row, int64_t channel) const {
    return base_ + offset_ + ((row * shape_[1] + channel) * shape_[2] * shape_[3]) * itemsize_;
  }
  const int64_t* shape() const { return shape_; }
  const std::string& path() const { return path_; }

 private:
  void parse_header(int itemsize, const std::vector<int64_t>& image_shape) {
    if (std::memcmp(base_, "\x93NUMPY", 6) != 0) throw maefast::decode::DecodeError(path_ + ": not a .npy file");
    int major = base_[6];
    size_t header_len = major == 1 ? (base_[8] | base_[9] << 8) : (base_[8] | base_[9] << 8 | base_[10] << 16 | base_[11] << 24);
    size_t start = major == 1 ? 10 : 12;
    if (start + header_len > size_) throw maefast::decode::DecodeError(path_ + ": truncated .npy header");
    std::string header(reinterpret_cast<const char*>(base_ + start), header_len);
    offset_ = start + header_len;
    const char* descr = itemsize == 1 ? "|u1" : "<u2";
    if (header.find(descr) == std::string::npos)
      throw maefast::decode::DecodeError(path_ + ": shard dtype is not " + descr + " (header " + header + ")");
    if (header.find("'fortran_order': False") == std::string::npos)
      throw maefast::decode::DecodeError(path_ + ": shard is not in C order");
    size_t open = header.find("'shape': (");
    if (open == std::string::npos) throw maefast::decode::DecodeError(path_ + ": no shape in the .npy header");
    const char* cursor = header.c_str() + open + 10;
    for (int d = 0; d < 4; ++d) {
      char* after = nullptr;
      shape_[d] = std::strtoll(cursor, &after, 10);
      if (after == cursor) throw maefast::decode::DecodeError(path_ + ": shard must have 4 dimensions (N, C, H, W)");
      cursor = after;
      while (*cursor == ',' || *cursor == ' ' || *cursor == 'L') ++cursor;
    }
    if (shape_[1] != image_shape[0] || shape_[2] != image_shape[1] || shape_[3] != image_shape[2]) {
      throw maefast::decode::DecodeError(
          path_ + ": expected a shard of (n, " + std::to_string(image_shape[0]) + ", " + std::to_string(image_shape[1]) +
          ", " + std::to_string(image_shape[2]) + ") uint" + std::to_string(8 * itemsize) + " images, found (" +
          std::to_string(shape_[0]) + ", " + std::to_string(shape_[1]) + ", " + std::to_string(shape_[2]) + ", " +
          std::to_string(shape_[3]) + ")");
    }
    itemsize_ = itemsize;
    const size_t image_bytes = static_cast<size_t>(image_shape[0] * image_shape[1] * image_shape[2]) * itemsize;
    if (shape_[0] < 0 || static_cast<size_t>(shape_[0]) > (size_ - offset_) / image_bytes)
      throw maefast::decode::DecodeError(path_ + ": truncated shard");
  }

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0, offset_ = 0;
  int64_t shape_[4] = {0, 0, 0, 0};
  int itemsize_ = 1;
};

std::vector<int64_t> int64_vector(const std::vector<int>& values) { return {values.begin(), values.end()}; }

class PackedCrops : public CropOperator {
 public:
  explicit PackedCrops(const OpSpec& spec)
      : CropOperator(spec),
        channels_(spec.GetRepeatedArgument<int>("channels")),
        image_shape_(int64_vector(spec.GetRepeatedArgument<int>("image_shape"))) {
    if (channels_.empty()) throw std::invalid_argument("maefast_packed_crops: channels must not be empty");
    if (image_shape_.size() != 3 || image_shape_[0] < 1 || image_shape_[1] < 1 || image_shape_[2] < 1)
      throw std::invalid_argument("maefast_packed_crops: image_shape must be [channels, height, width] >= 1");
  }

 protected:
  int first_plan_input() const override { return 2; }
  int num_channels() const override { return static_cast<int>(channels_.size()); }

  void RunImpl(Workspace& ws) override {
    auto& output = ws.Output<CPUBackend>(0);
    auto& pool = ws.GetThreadPool();
    const int samples = output.num_samples();
    for (int s = 0; s < samples; ++s) {
      pool.AddWork([&, s](int) {
        const MappedShard& shard = this->shard(path_of(ws.Input<CPUBackend>(0)[s]));
        int64_t row = ws.Input<CPUBackend>(1)[s].data<int32_t>()[0];
        const int64_t* shape = shard.shape();
        if (row < 0 || row >= shape[0])
          throw maefast::decode::DecodeError(shard.path() + ": row " + std::to_string(row) + " outside the shard's " +
                                             std::to_string(shape[0]) + " images");
        CropPlan crops = plan(ws, s);
        void* out = output[s].raw_mutable_data();
        const int count = static_cast<int>(channels_.size());
        for (int c = 0; c < count; ++c) {
          if (channels_[c] < 0 || channels_[c] >= shape[1])
            throw maefast::decode::DecodeError(shard.path() + ": channel " + std::to_string(channels_[c]) +
                                               " outside the shard's " + std::to_string(shape[1]) + " channels");
          const uint8_t* plane = shard.plane(row, channels_[c]);
          if (element_size(dtype_) == 1)
            copy_crops(plane, shape[2], shape[3], crops, crop_size_, c, count, static_cast<uint8_t*>(out), shard.path());
          else
            copy_crops(reinterpret_cast<const uint16_t*>(plane), shape[2], shape[3], crops, crop_size_, c, count,
                       static_cast<uint16_t*>(out), shard.path());
        }
      });
    }
    pool.RunAll();
  }

 private:
  const MappedShard& shard(const std::string& path) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = shards_.find(path);
    if (found != shards_.end()) return *found->second;
    auto mapped = std::make_unique<MappedShard>(path, element_size(dtype_), image_shape_);
    return *shards_.emplace(path, std::move(mapped)).first->second;
  }

  std::vector<int> channels_;
  std::vector<int64_t> image_shape_;
  std::mutex mutex_;
  std::unordered_map<std::string, std::unique_ptr<MappedShard>> shards_;
};

// The bytes of one image file per sample (for DALI's decoders), after checking its header against the
// dataset's declared image, so that no decoder silently converts a bit depth or decodes a wrong size.
class ReadImage : public ::dali::Operator<CPUBackend> {
 public:
  explicit ReadImage(const OpSpec& spec)
      : ::dali::Operator<CPUBackend>(spec),
        image_(image_spec(spec, element_size(spec.GetArgument<DALIDataType>("dtype")))) {}

 protected:
  bool SetupImpl(std::vector<OutputDesc>& outputs, const Workspace& ws) override {
    const auto& paths = ws.Input<CPUBackend>(0);
    const int samples = paths.num_samples();
    TensorListShape<> shape(samples, 1);
    sizes_.resize(samples);
    for (int s = 0; s < samples; ++s) {
      sizes_[s] = file_size(path_of(paths[s]));
      shape.set_tensor_shape(s, {static_cast<int64_t>(sizes_[s])});
    }
    outputs.resize(1);
    outputs[0] = {shape, DALI_UINT8};
    return true;
  }

  void RunImpl(Workspace& ws) override {
    auto& output = ws.Output<CPUBackend>(0);
    auto& pool = ws.GetThreadPool();
    for (int s = 0; s < output.num_samples(); ++s) {
      pool.AddWork([&, s](int) {
        const std::string path = path_of(ws.Input<CPUBackend>(0)[s]);
        uint8_t* bytes = static_cast<uint8_t*>(output[s].raw_mutable_data());
        read_file(path, bytes, sizes_[s]);
        check_file(path, image_, bytes, sizes_[s]);
      });
    }
    pool.RunAll();
  }

 private:
  maefast::decode::ImageSpec image_;
  std::vector<size_t> sizes_;
};

}  // namespace maefast_dali

DALI_REGISTER_OPERATOR(MaefastPngCrops, ::maefast_dali::PngCrops, ::dali::CPU);
DALI_SCHEMA(MaefastPngCrops)
    .DocStr("Reads and decodes the per-channel PNG files of each image once and cuts its augmented crops: "
            "(K, C, crop_size, crop_size) per sample.")
    .NumInput(2, 66)
    .NumOutput(1)
    .AddArg("crop_size", "Side of the square crops.", DALI_INT32)
    .AddArg("channels", "Number of channel-file inputs (the first inputs; anchors and augment follow).",
            DALI_INT32)
    .AddArg("dtype", "UINT8 or UINT16: the data set's pixel type.", DALI_DATA_TYPE)
    .AddArg("height", "The data set's image height: every file must have it.", DALI_INT32)
    .AddArg("width", "The data set's image width: every file must have it.", DALI_INT32)
    .AddOptionalArg("augment", "Whether a (K, 3) uint8 augment input follows the anchors.", false);

DALI_REGISTER_OPERATOR(MaefastPackedCrops, ::maefast_dali::PackedCrops, ::dali::CPU);
DALI_SCHEMA(MaefastPackedCrops)
    .DocStr("Cuts augmented crops of one image of a memory-mapped .npy shard (N, C, H, W): (K, C', crop_size, "
            "crop_size) per sample, C' = len(channels).")
    .NumInput(3, 4)
    .NumOutput(1)
    .AddArg("crop_size", "Side of the square crops.", DALI_INT32)
    .AddArg("channels", "Stored channel indices to output, in order.", DALI_INT_VEC)
    .AddArg("dtype", "UINT8 or UINT16: the shard's pixel type.", DALI_DATA_TYPE)
    .AddArg("image_shape", "[channels, height, width] every shard's images must have (the manifest's).",
            DALI_INT_VEC)
    .AddOptionalArg("augment", "Whether a (K, 3) uint8 augment input follows the anchors.", false);

DALI_REGISTER_OPERATOR(MaefastReadImage, ::maefast_dali::ReadImage, ::dali::CPU);
DALI_SCHEMA(MaefastReadImage)
    .DocStr("Reads one PNG or TIFF file per sample into its bytes (uint8), refusing a file whose header "
            "differs from the data set's declared image: height x width, dtype, one sample, one page.")
    .NumInput(1)
    .NumOutput(1)
    .AddArg("dtype", "UINT8 or UINT16: the data set's pixel type.", DALI_DATA_TYPE)
    .AddArg("height", "The data set's image height.", DALI_INT32)
    .AddArg("width", "The data set's image width.", DALI_INT32);
