// DALI operators of maefast's decode-and-crop loader (a DALI plugin, built and loaded on first use by
// maefast/data/dali_plugin.py against the installed DALI).
//
//   crops, errors = fn.maefast_image_crops(file_0, ..., file_{C-1}[, illum_0, ..., illum_{C-1}], anchors
//                                          [, augment], crop_size=s, channels=C, dtype=..., height=H, width=W,
//                                          max_ratio=r, illumination=False, augment=False)
//   crops, errors = fn.maefast_packed_crops(shard_path, row, anchors[, augment], crop_size=s, channels=[...],
//                                           dtype=..., image_shape=[C_stored, H, W])
//   crops, errors = fn.maefast_decoded_crops(image, error, anchors[, augment], crop_size=s, channels=C, dtype=...)
//   encoded, errors = fn.maefast_compressed_image(path_or_bytes, dtype=..., height=H, width=W, max_ratio=r,
//                                                 from_files=True)
//   function, errors = fn.maefast_illumination(path, height=H, width=W)
//
// The crop operators: each sample is one image; its crops sample is (K, C, s, s): its K crops at anchors (K, 2)
// int32 (top, left), each transposed / flipped as augment (K, 3) uint8 says (maefast.data.plan.apply_augment)
// when augment=True, else as they lie (the GPU pipeline flips them on the device). Channel images (PNG or
// TIFF) are read, checked and decoded once each by maefast's own readers (csrc/decode/image.h: the same code
// maefast._C runs for the PyTorch loader and `data check`), corrected by their illumination function (.npy,
// optional) and cropped. Packed: each shard (.npy (N, C, H, W)) is checked and memory-mapped once per
// operator, and each crop copies only its own rows. Decoded: images (C, H, W) that the host decoded
// (RxRx3-core's PNG channel images: maefast.data.rxrx3_core.decode_image, the PyTorch loader's reader), each
// with the error of the image it could not read ("" when it was read).
//
// maefast_compressed_image reads a JPEG or JPEG 2000 channel image (or takes RxRx3-core's PNG or JPEG 2000 bytes)
// and checks it against the data set's spec and the table of formats (csrc/decode/jpeg.h, jpeg2000.h; bytes as
// check_encoded checks them on every path) before DALI's decoder sees it: the sample
// is the file's bytes, or, for a file that was refused, a PNG of zeros of the spec's size, so that the decoder
// decodes the rest of the batch. maefast_illumination reads and checks an illumination function (cached per
// file), or gives ones for a refused one.
//
// An image that cannot be read does not stop the pipeline: its crops are zeros (or its bytes the blank PNG,
// its function ones) and its errors sample holds "<kind>\0<path>\0<reason>" (kind: missing, unreadable or
// format; as maefast.data.ImageReadError names them), whatever exception the reader raised; the errors sample
// of an image read whole is empty. The loader then refuses the image or skips it (on_error).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../decode/crops.h"
#include "../decode/image.h"
#include "dali/pipeline/operator/operator.h"

namespace maefast_dali {

namespace decode = maefast::decode;
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

int element_size(DALIDataType type) {
  if (type == DALI_UINT8) return 1;
  if (type == DALI_UINT16) return 2;
  throw std::invalid_argument("maefast crops: dtype must be UINT8 or UINT16");
}

// Why one image could not be read: its kind (ImageReadError.kind), the file and the reason.
struct Failure {
  std::string kind, path, reason;
  bool failed() const { return !kind.empty(); }
  std::string encoded() const { return kind + '\0' + path + '\0' + reason; }
  // The failure encoded() describes (maefast.data.dali_backend.encode_error writes it on the host).
  static Failure decoded(const std::string& text) {
    const size_t first = text.find('\0'), second = first == std::string::npos ? first : text.find('\0', first + 1);
    if (second == std::string::npos) return {"unreadable", "", text};
    return {text.substr(0, first), text.substr(first + 1, second - first - 1), text.substr(second + 1)};
  }
};

// Runs read(), turning every exception into the failure of the file at `path`.
template <typename Read>
void guarded(Failure& failure, const std::string& path, Read read) {
  try {
    read();
  } catch (const decode::DecodeError& error) {
    failure = {decode::kind_of(error), path, error.what()};
  } catch (const std::bad_alloc&) {
    failure = {"unreadable", path, "out of memory while reading the file"};
  } catch (const std::exception& error) {
    failure = {"unreadable", path, error.what()};
  } catch (...) {
    failure = {"unreadable", path, "unknown error while reading the file"};
  }
}

// The data set's spec from the operators' arguments (height, width, dtype, max_ratio).
decode::ImageSpec spec_from(const OpSpec& spec, bool with_dtype = true) {
  decode::ImageSpec image;
  image.height = spec.GetArgument<int>("height");
  image.width = spec.GetArgument<int>("width");
  if (with_dtype) {
    image.bytes_per_pixel = element_size(spec.GetArgument<DALIDataType>("dtype"));
    image.max_ratio = spec.GetArgument<float>("max_ratio");
  }
  if (image.height < 1 || image.width < 1 || !(image.max_ratio > 0))
    throw std::invalid_argument("maefast operators: height, width and max_ratio must be positive");
  return image;
}

// Fills output `index` with each sample's error message ("" for a sample that was read).
void write_errors(Workspace& ws, int index, const std::vector<std::string>& messages) {
  const int samples = static_cast<int>(messages.size());
  TensorListShape<> shape(samples, 1);
  for (int s = 0; s < samples; ++s) shape.set_tensor_shape(s, {static_cast<int64_t>(messages[s].size())});
  auto& errors = ws.Output<CPUBackend>(index);
  errors.Resize(shape, DALI_UINT8, ::dali::BatchContiguity::Contiguous);
  for (int s = 0; s < samples; ++s)
    if (!messages[s].empty()) std::memcpy(errors[s].raw_mutable_data(), messages[s].data(), messages[s].size());
}

// Illumination functions read and checked once per operator (a few per plate and channel), by path.
class IlluminationCache {
 public:
  const std::vector<float>& get(const std::string& path, int64_t height, int64_t width) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = functions_.find(path);
      if (found != functions_.end()) return *found->second;
    }
    auto function = std::make_unique<std::vector<float>>(decode::read_illumination(path, height, width));
    std::lock_guard<std::mutex> lock(mutex_);
    return *functions_.emplace(path, std::move(function)).first->second;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::unique_ptr<std::vector<float>>> functions_;
};

// Anchors (K, 2) and optional augment flags (K, 3) of one sample.
struct CropPlan {
  const int32_t* anchors = nullptr;
  const uint8_t* augment = nullptr;
  int count = 0;
};

template <typename T>
void copy_crops(const T* plane, int64_t height, int64_t width, const CropPlan& plan, int size, int channel, int channels,
                T* out) {
  for (int k = 0; k < plan.count; ++k) {
    int64_t y = plan.anchors[2 * k], x = plan.anchors[2 * k + 1];
    if (y < 0 || x < 0 || y + size > height || x + size > width) {
      throw std::invalid_argument("crop at (" + std::to_string(y) + ", " + std::to_string(x) + ") of size " +
                                  std::to_string(size) + " lies outside the " + std::to_string(height) + "x" +
                                  std::to_string(width) + " image");
    }
    const uint8_t* flags = plan.augment ? plan.augment + 3 * k : nullptr;
    T* target = out + (static_cast<int64_t>(k) * channels + channel) * size * size;
    decode::copy_crop(plane, width, y, x, size, flags && flags[0], flags && flags[1], flags && flags[2], target);
  }
}

// Shared by both operators: reads the anchors / augment inputs, allocates the outputs (crops (K, C, s, s),
// errors) and fills the errors output from each sample's failure.
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
  // Reads sample s's crops into out (zeroed by the caller when it fails); records its failure.
  virtual void run_sample(Workspace& ws, int sample, void* out, std::vector<Failure>& failures) = 0;

  // The outputs' sizes depend on what the readers find (the errors), so RunImpl allocates them.
  bool SetupImpl(std::vector<OutputDesc>&, const Workspace&) override { return false; }

  void RunImpl(Workspace& ws) override {
    const auto& anchors = ws.Input<CPUBackend>(first_plan_input());
    const int samples = anchors.num_samples();
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
    auto& crops = ws.Output<CPUBackend>(0);
    crops.Resize(shape, dtype_, ::dali::BatchContiguity::Contiguous);
    std::vector<Failure> failures(static_cast<size_t>(samples) * failure_slots());
    auto& pool = ws.GetThreadPool();
    for (int s = 0; s < samples; ++s) run_sample(ws, s, crops[s].raw_mutable_data(), failures);
    pool.RunAll();

    std::vector<std::string> messages(samples);
    for (int s = 0; s < samples; ++s) {
      for (int slot = 0; slot < failure_slots(); ++slot) {  // the first failing channel names the image's error
        const Failure& failure = failures[static_cast<size_t>(s) * failure_slots() + slot];
        if (failure.failed()) {
          messages[s] = failure.encoded();
          std::memset(crops[s].raw_mutable_data(), 0, ::dali::volume(shape.tensor_shape(s)) * element_size(dtype_));
          break;
        }
      }
    }
    write_errors(ws, 1, messages);
  }

  // Failures recorded per sample (one per channel where channels are read in parallel).
  virtual int failure_slots() const { return 1; }

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

class ImageCrops : public CropOperator {
 public:
  explicit ImageCrops(const OpSpec& spec)
      : CropOperator(spec),
        channels_(spec.GetArgument<int>("channels")),
        illumination_(spec.GetArgument<bool>("illumination")),
        image_(spec_from(spec)) {}

 protected:
  int first_plan_input() const override { return channels_ * (illumination_ ? 2 : 1); }
  int num_channels() const override { return channels_; }
  int failure_slots() const override { return channels_; }

  void run_sample(Workspace& ws, int s, void* out, std::vector<Failure>& failures) override {
    for (int c = 0; c < channels_; ++c) {
      ws.GetThreadPool().AddWork([&, s, c, out](int) {
        Failure& failure = failures[static_cast<size_t>(s) * channels_ + c];
        thread_local decode::ImageDecoder decoder;
        thread_local std::vector<uint8_t> plane;
        const std::string path = path_of(ws.Input<CPUBackend>(c)[s]);
        guarded(failure, path, [&] {
          plane.resize(image_.image_bytes() + decode::kDecodeSlack);
          decoder.decode(path, image_, plane.data());
        });
        if (failure.failed()) return;
        const size_t pixels = static_cast<size_t>(image_.height) * image_.width;
        if (illumination_) {
          const std::string illum_path = path_of(ws.Input<CPUBackend>(channels_ + c)[s]);
          guarded(failure, illum_path, [&] {
            const std::vector<float>& function = illumination_cache_.get(illum_path, image_.height, image_.width);
            if (image_.bytes_per_pixel == 1) decode::apply_illumination(plane.data(), function.data(), pixels);
            else decode::apply_illumination(reinterpret_cast<uint16_t*>(plane.data()), function.data(), pixels);
          });
          if (failure.failed()) return;
        }
        const CropPlan crops = plan(ws, s);  // a crop outside the image is the plan's bug: it stops the pipeline
        if (image_.bytes_per_pixel == 1)
          copy_crops(plane.data(), image_.height, image_.width, crops, crop_size_, c, channels_,
                     static_cast<uint8_t*>(out));
        else
          copy_crops(reinterpret_cast<const uint16_t*>(plane.data()), image_.height, image_.width, crops, crop_size_,
                     c, channels_, static_cast<uint16_t*>(out));
      });
    }
  }

 private:
  int channels_;
  bool illumination_;
  decode::ImageSpec image_;
  IlluminationCache illumination_cache_;
};

// A read-only memory map of one checked .npy shard (N, C, H, W) of the data set's images.
class MappedShard {
 public:
  MappedShard(const std::string& path, int64_t channels, const decode::ImageSpec& image) : file_(path) {
    header_ = decode::npy_header(file_.data(), file_.size());
    decode::check_shard(header_, file_.size(), channels, image);
    itemsize_ = image.bytes_per_pixel;
  }
  const uint8_t* plane(int64_t row, int64_t channel) const {
    const auto& shape = header_.shape;
    return file_.data() + header_.data_offset + ((row * shape[1] + channel) * shape[2] * shape[3]) * itemsize_;
  }
  const std::vector<int64_t>& shape() const { return header_.shape; }

 private:
  decode::MappedFile file_;
  decode::NpyHeader header_;
  int itemsize_ = 1;
};

class PackedCrops : public CropOperator {
 public:
  explicit PackedCrops(const OpSpec& spec)
      : CropOperator(spec),
        channels_(spec.GetRepeatedArgument<int>("channels")),
        image_shape_(spec.GetRepeatedArgument<int>("image_shape")) {
    if (channels_.empty()) throw std::invalid_argument("maefast_packed_crops: channels must not be empty");
    if (image_shape_.size() != 3 || image_shape_[0] < 1 || image_shape_[1] < 1 || image_shape_[2] < 1)
      throw std::invalid_argument("maefast_packed_crops: image_shape must be [channels, height, width] >= 1");
    for (int channel : channels_)
      if (channel < 0 || channel >= image_shape_[0])
        throw std::invalid_argument("maefast_packed_crops: channel " + std::to_string(channel) + " outside the " +
                                    std::to_string(image_shape_[0]) + " stored channels");
    image_.height = image_shape_[1];
    image_.width = image_shape_[2];
    image_.bytes_per_pixel = element_size(dtype_);
  }

 protected:
  int first_plan_input() const override { return 2; }
  int num_channels() const override { return static_cast<int>(channels_.size()); }

  void run_sample(Workspace& ws, int s, void* out, std::vector<Failure>& failures) override {
    ws.GetThreadPool().AddWork([&, s, out](int) {
      const std::string path = path_of(ws.Input<CPUBackend>(0)[s]);
      const MappedShard* shard = nullptr;
      const int64_t row = ws.Input<CPUBackend>(1)[s].data<int64_t>()[0];
      guarded(failures[s], path, [&] {
        shard = &this->shard(path);
        decode::check_shard_row(row, shard->shape()[0]);
      });
      if (failures[s].failed()) return;
      const CropPlan crops = plan(ws, s);
      const int count = static_cast<int>(channels_.size());
      for (int c = 0; c < count; ++c) {
        const uint8_t* plane = shard->plane(row, channels_[c]);
        if (image_.bytes_per_pixel == 1)
          copy_crops(plane, image_.height, image_.width, crops, crop_size_, c, count, static_cast<uint8_t*>(out));
        else
          copy_crops(reinterpret_cast<const uint16_t*>(plane), image_.height, image_.width, crops, crop_size_, c,
                     count, static_cast<uint16_t*>(out));
      }
    });
  }

 private:
  // The shard at `path`, checked and mapped once per operator (a shard that fails is tried again next time).
  const MappedShard& shard(const std::string& path) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = shards_.find(path);
      if (found != shards_.end()) return *found->second;
    }
    auto mapped = std::make_unique<MappedShard>(path, image_shape_[0], image_);
    std::lock_guard<std::mutex> lock(mutex_);
    return *shards_.emplace(path, std::move(mapped)).first->second;
  }

  std::vector<int> channels_;
  std::vector<int> image_shape_;
  decode::ImageSpec image_;
  std::mutex mutex_;
  std::unordered_map<std::string, std::unique_ptr<MappedShard>> shards_;
};

// Writes each sample's bytes (samples[s], one uint8 vector each) to output 0.
void write_bytes(Workspace& ws, const std::vector<const std::vector<uint8_t>*>& samples) {
  TensorListShape<> shape(static_cast<int>(samples.size()), 1);
  for (size_t s = 0; s < samples.size(); ++s) shape.set_tensor_shape(s, {static_cast<int64_t>(samples[s]->size())});
  auto& out = ws.Output<CPUBackend>(0);
  out.Resize(shape, DALI_UINT8, ::dali::BatchContiguity::Contiguous);
  for (size_t s = 0; s < samples.size(); ++s)
    if (!samples[s]->empty()) std::memcpy(out[s].raw_mutable_data(), samples[s]->data(), samples[s]->size());
}

class CompressedImage : public ::dali::Operator<CPUBackend> {
 public:
  explicit CompressedImage(const OpSpec& spec)
      : ::dali::Operator<CPUBackend>(spec), image_(spec_from(spec)), from_files_(spec.GetArgument<bool>("from_files")),
        blank_(decode::blank_png(image_)) {}

 protected:
  bool SetupImpl(std::vector<OutputDesc>&, const Workspace&) override { return false; }

  void RunImpl(Workspace& ws) override {
    const auto& sources = ws.Input<CPUBackend>(0);
    const int samples = sources.num_samples();
    bytes_.resize(samples);
    std::vector<Failure> failures(samples);
    auto& pool = ws.GetThreadPool();
    for (int s = 0; s < samples; ++s) {
      pool.AddWork([&, s](int) {
        const auto source = sources[s];
        const uint8_t* data = static_cast<const uint8_t*>(source.raw_data());
        const size_t size = static_cast<size_t>(source.shape().num_elements());
        const std::string where = from_files_ ? path_of(source) : "";
        guarded(failures[s], where, [&] {
          if (from_files_) {
            decode::read_channel_file(where, image_, bytes_[s]);
          } else {
            bytes_[s].assign(data, data + size);
          }
          if (from_files_) {  // a JPEG or JPEG 2000 file
            decode::check_compressed(bytes_[s].data(), bytes_[s].size(), image_);
          } else {  // RxRx3-core's bytes: checked as every path checks them (PNG or JPEG 2000)
            decode::check_encoded(bytes_[s].data(), bytes_[s].size(), image_);
          }
        });
      });
    }
    pool.RunAll();
    std::vector<const std::vector<uint8_t>*> outputs(samples);
    std::vector<std::string> messages(samples);
    for (int s = 0; s < samples; ++s) {
      outputs[s] = failures[s].failed() ? &blank_ : &bytes_[s];
      if (failures[s].failed()) messages[s] = failures[s].encoded();
    }
    write_bytes(ws, outputs);
    write_errors(ws, 1, messages);
  }

 private:
  decode::ImageSpec image_;
  bool from_files_;
  std::vector<uint8_t> blank_;                // decodes to zeros of the spec's size: a refused file's stand-in
  std::vector<std::vector<uint8_t>> bytes_;  // per sample, kept between iterations (their capacity)
};

class Illumination : public ::dali::Operator<CPUBackend> {
 public:
  explicit Illumination(const OpSpec& spec) : ::dali::Operator<CPUBackend>(spec), image_(spec_from(spec, false)) {}

 protected:
  bool SetupImpl(std::vector<OutputDesc>&, const Workspace&) override { return false; }

  void RunImpl(Workspace& ws) override {
    const auto& paths = ws.Input<CPUBackend>(0);
    const int samples = paths.num_samples();
    std::vector<Failure> failures(samples);
    std::vector<const std::vector<float>*> functions(samples, nullptr);
    auto& pool = ws.GetThreadPool();
    for (int s = 0; s < samples; ++s) {
      pool.AddWork([&, s](int) {
        const std::string path = path_of(paths[s]);
        guarded(failures[s], path, [&] { functions[s] = &cache_.get(path, image_.height, image_.width); });
      });
    }
    pool.RunAll();
    const int64_t pixels = image_.height * image_.width;
    auto& out = ws.Output<CPUBackend>(0);
    out.Resize(::dali::uniform_list_shape(samples, {image_.height, image_.width}), DALI_FLOAT,
               ::dali::BatchContiguity::Contiguous);
    std::vector<std::string> messages(samples);
    for (int s = 0; s < samples; ++s) {
      float* target = static_cast<float*>(out[s].raw_mutable_data());
      if (failures[s].failed()) {
        messages[s] = failures[s].encoded();
        std::fill(target, target + pixels, 1.0f);
      } else {
        std::memcpy(target, functions[s]->data(), pixels * sizeof(float));
      }
    }
    write_errors(ws, 1, messages);
  }

 private:
  decode::ImageSpec image_;
  IlluminationCache cache_;
};

// Crops of images decoded on the host: input 0 holds each image (C, H, W) of the data set's dtype, input 1 its
// error ("kind\0path\0reason", empty when it was read), which becomes the sample's error.
class DecodedCrops : public CropOperator {
 public:
  explicit DecodedCrops(const OpSpec& spec) : CropOperator(spec), channels_(spec.GetArgument<int>("channels")) {
    if (channels_ < 1) throw std::invalid_argument("maefast_decoded_crops: channels must be >= 1");
  }

 protected:
  int first_plan_input() const override { return 2; }
  int num_channels() const override { return channels_; }

  void run_sample(Workspace& ws, int s, void* out, std::vector<Failure>& failures) override {
    const auto& images = ws.Input<CPUBackend>(0);
    const auto error = ws.Input<CPUBackend>(1)[s];
    if (error.shape().num_elements() > 0) {
      const char* text = static_cast<const char*>(error.raw_data());
      failures[s] = Failure::decoded(std::string(text, text + error.shape().num_elements()));
      return;
    }
    const auto shape = images.tensor_shape(s);
    if (images.type() != dtype_ || shape.size() != 3 || shape[0] != channels_)
      throw std::invalid_argument("maefast_decoded_crops: each image must be (" + std::to_string(channels_) +
                                  ", H, W) of the dtype argument's type");
    const int64_t height = shape[1], width = shape[2];
    const CropPlan crops = plan(ws, s);
    const uint8_t* image = static_cast<const uint8_t*>(images[s].raw_data());
    ws.GetThreadPool().AddWork([=](int) {
      const size_t plane = static_cast<size_t>(height) * width * element_size(dtype_);
      for (int c = 0; c < channels_; ++c) {
        if (dtype_ == DALI_UINT8)
          copy_crops(image + c * plane, height, width, crops, crop_size_, c, channels_, static_cast<uint8_t*>(out));
        else
          copy_crops(reinterpret_cast<const uint16_t*>(image + c * plane), height, width, crops, crop_size_, c,
                     channels_, static_cast<uint16_t*>(out));
      }
    });
  }

 private:
  int channels_;
};

}  // namespace maefast_dali

DALI_REGISTER_OPERATOR(MaefastImageCrops, ::maefast_dali::ImageCrops, ::dali::CPU);
DALI_SCHEMA(MaefastImageCrops)
    .DocStr("Reads, checks and decodes the per-channel PNG or TIFF files of each image once (optionally dividing "
            "by their illumination functions) and cuts its augmented crops: (K, C, crop_size, crop_size) per "
            "sample, and the sample's error (empty when it was read; else kind, path and reason).")
    .NumInput(2, 130)
    .NumOutput(2)
    .AddArg("crop_size", "Side of the square crops.", DALI_INT32)
    .AddArg("channels", "Number of channel-file inputs (the first inputs; illumination files, anchors and "
            "augment follow).", DALI_INT32)
    .AddArg("dtype", "UINT8 or UINT16: the data set's pixel type.", DALI_DATA_TYPE)
    .AddArg("height", "The data set's image height: every file must have it.", DALI_INT32)
    .AddArg("width", "The data set's image width: every file must have it.", DALI_INT32)
    .AddArg("max_ratio", "The most decoded bytes per byte of file (the decompression ratio cap).", DALI_FLOAT)
    .AddOptionalArg("illumination", "Whether `channels` illumination-function (.npy) inputs follow the files.", false)
    .AddOptionalArg("augment", "Whether a (K, 3) uint8 augment input follows the anchors.", false);

DALI_REGISTER_OPERATOR(MaefastPackedCrops, ::maefast_dali::PackedCrops, ::dali::CPU);
DALI_SCHEMA(MaefastPackedCrops)
    .DocStr("Cuts augmented crops of one image of a memory-mapped .npy shard (N, C, H, W): (K, C', crop_size, "
            "crop_size) per sample, C' = len(channels), and the sample's error (empty when it was read).")
    .NumInput(3, 4)
    .NumOutput(2)
    .AddArg("crop_size", "Side of the square crops.", DALI_INT32)
    .AddArg("channels", "Stored channel indices to output, in order.", DALI_INT_VEC)
    .AddArg("dtype", "UINT8 or UINT16: the shard's pixel type.", DALI_DATA_TYPE)
    .AddArg("image_shape", "[channels, height, width] every shard's images must have (the manifest's).",
            DALI_INT_VEC)
    .AddOptionalArg("augment", "Whether a (K, 3) uint8 augment input follows the anchors.", false);

DALI_REGISTER_OPERATOR(MaefastCompressedImage, ::maefast_dali::CompressedImage, ::dali::CPU);
DALI_SCHEMA(MaefastCompressedImage)
    .DocStr("Reads a JPEG or JPEG 2000 channel image (or takes its bytes) and checks it against the data set's "
            "spec and maefast's table of formats before a decoder sees it: the file's bytes (a refused file: a "
            "PNG of zeros of the spec's size) and the sample's error (empty when it was read; else kind, path "
            "and reason).")
    .NumInput(1)
    .NumOutput(2)
    .AddArg("dtype", "UINT8 or UINT16: the data set's pixel type.", DALI_DATA_TYPE)
    .AddArg("height", "The data set's image height: every file must have it.", DALI_INT32)
    .AddArg("width", "The data set's image width: every file must have it.", DALI_INT32)
    .AddArg("max_ratio", "The most decoded bytes per byte of file (the decompression ratio cap).", DALI_FLOAT)
    .AddOptionalArg("from_files", "Whether the input is the file's path (else its bytes).", true);

DALI_REGISTER_OPERATOR(MaefastIllumination, ::maefast_dali::Illumination, ::dali::CPU);
DALI_SCHEMA(MaefastIllumination)
    .DocStr("Reads and checks an illumination function (.npy, (height, width), float32 or float64, finite and "
            "> 0; cached per file): (height, width) float32 (ones for a refused file) and the sample's error.")
    .NumInput(1)
    .NumOutput(2)
    .AddArg("height", "The data set's image height.", DALI_INT32)
    .AddArg("width", "The data set's image width.", DALI_INT32);

DALI_REGISTER_OPERATOR(MaefastDecodedCrops, ::maefast_dali::DecodedCrops, ::dali::CPU);
DALI_SCHEMA(MaefastDecodedCrops)
    .DocStr("Cuts augmented crops of images decoded on the host ((C, H, W) per sample): (K, C, crop_size, "
            "crop_size) per sample, and the sample's error (the error input: empty when the image was read).")
    .NumInput(3, 4)
    .NumOutput(2)
    .AddArg("crop_size", "Side of the square crops.", DALI_INT32)
    .AddArg("channels", "Channels of every image.", DALI_INT32)
    .AddArg("dtype", "UINT8 or UINT16: the images' pixel type.", DALI_DATA_TYPE)
    .AddOptionalArg("augment", "Whether a (K, 3) uint8 augment input follows the anchors.", false);
