#include "agent/image/stream_image.hpp"

#include <algorithm>

#include "agent/base/messages.hpp"
#include "agent/image/open_image.hpp"
#include "agent/image/ova_stream.hpp"
#include "agent/image/qcow2_stream.hpp"
#include "agent/image/vmdk_stream.hpp"

namespace byoi {
namespace {

constexpr size_t kContainerBytes = 6;                    // DetectCompressor's longest magic
constexpr size_t kFormatBytes = (64 << 10) + (4 << 10);  // what DetectFormat reads

uint64_t RoundUpToSector(uint64_t n) { return (n + 511) / 512 * 512; }

}  // namespace

StreamImage::StreamImage(VirtualDiskSink& sink, StreamImageOptions options, HeadFn on_head)
    : sink_(sink), options_(options), on_head_(std::move(on_head)) {}

StreamImage::~StreamImage() = default;

const OvaInfo* StreamImage::ova() const { return ova_ ? &ova_->info() : nullptr; }

uint64_t StreamImage::memory_peak() const {
  if (qcow2_) return qcow2_->memory_peak();
  if (ova_) return ova_->memory_peak();
  return vmdk_ ? vmdk_->memory_peak() : 0;
}

Status StreamImage::Fail(Status s) {
  if (!s.ok() && error_.ok()) error_ = s;
  return s;
}

Status StreamImage::Start(std::optional<uint64_t> total) {
  total_ = total;
  return Status::Ok();
}

Status StreamImage::Write(std::span<const uint8_t> bytes) {
  if (!error_.ok()) return error_;
  in_ += bytes.size();
  if (!container_known_) {
    const size_t take = std::min(kContainerBytes - file_head_.size(), bytes.size());
    file_head_.insert(file_head_.end(), bytes.begin(), bytes.begin() + take);
    bytes = bytes.subspan(take);
    if (file_head_.size() < kContainerBytes) return Status::Ok();
    std::vector<uint8_t> first = std::move(file_head_);
    file_head_.clear();
    BYOI_RETURN_IF_ERROR(Fail(Container(first)));
  }
  if (bytes.empty()) return Status::Ok();
  return Fail(Container(bytes));
}

Status StreamImage::Container(std::span<const uint8_t> bytes) {
  if (!container_known_) {
    container_known_ = true;
    head_.container = DetectCompressor(bytes);
    if (head_.container != Compressor::kNone) {
      BYOI_ASSIGN_OR_RETURN(decoder_,
                            StreamDecoder::Create(head_.container, options_.memory_budget));
    }
  }
  if (!decoder_) return Content(bytes);
  Status s = decoder_->Feed(bytes, [this](std::span<const uint8_t> out) { return Content(out); });
  if (s.code() == Code::kTooBig) s.DefaultMessage(msg::TooBigForMemory(options_.type));
  return s;
}

uint64_t StreamImage::ReaderBudget() {
  if (!decoder_) return options_.memory_budget;
  // The decoder's state is set by the stream's header, read before the first decoded byte. It
  // keeps that (Lower never goes under it), or half the budget when that is more (room for a
  // later stream's larger dictionary); the rest is the reader's.
  const uint64_t keep = decoder_->Lower(options_.memory_budget / 2);
  return options_.memory_budget - std::min(options_.memory_budget, keep);
}

Status StreamImage::Content(std::span<const uint8_t> bytes) {
  if (!identified_) {
    const size_t take = std::min(kFormatBytes - content_head_.size(), bytes.size());
    content_head_.insert(content_head_.end(), bytes.begin(), bytes.begin() + take);
    bytes = bytes.subspan(take);
    if (content_head_.size() < kFormatBytes) return Status::Ok();
    BYOI_RETURN_IF_ERROR(Identify());
  }
  if (bytes.empty()) return Status::Ok();
  return Forward(bytes);
}

Status StreamImage::Identify() {
  identified_ = true;
  head_.format = DetectFormat(content_head_);
  head_.format.virtual_size = 0;
  std::vector<uint8_t> first = std::move(content_head_);
  content_head_.clear();
  // By its magic, as OpenImage does: a version the reader refuses is refused with its reason.
  if (HasQcow2Magic(first)) {
    Qcow2StreamOptions q;
    q.memory_budget = ReaderBudget();
    q.threads = options_.threads;
    qcow2_ = std::make_unique<Qcow2StreamReader>(sink_, q, [this](const Qcow2Info& info) {
      head_.qcow2 = info;
      head_.virtual_size = info.virtual_size;
      return CallHead();
    });
    // A decoded file's length is not known before its end.
    BYOI_RETURN_IF_ERROR(qcow2_->Start(decoder_ ? std::nullopt : total_));
  } else if (const ImageFormat reader = SourceFormat(first);
             reader == ImageFormat::kOva || reader == ImageFormat::kVmdk) {
    // As OpenImage chooses (SourceFormat): an OVA's disk, or a VMDK file, through the VMDK reader.
    auto on_disk = [this](const VmdkInfo& info) {
      head_.vmdk = info;
      head_.virtual_size = info.virtual_size;
      return CallHead();
    };
    const std::optional<uint64_t> total = decoder_ ? std::nullopt : total_;
    if (reader == ImageFormat::kOva) {
      ova_ = std::make_unique<OvaStreamReader>(
          sink_, OvaStreamOptions{.memory_budget = ReaderBudget()}, on_disk);
      BYOI_RETURN_IF_ERROR(ova_->Start(total));
    } else {
      vmdk_ = std::make_unique<VmdkStreamReader>(
          sink_, VmdkStreamOptions{.memory_budget = ReaderBudget(), .type = "vmdk"}, on_disk);
      BYOI_RETURN_IF_ERROR(vmdk_->Start(total));
    }
  } else {
    if (!decoder_ && total_) head_.virtual_size = RoundUpToSector(*total_);
    BYOI_RETURN_IF_ERROR(CallHead());
  }
  if (first.empty()) return Status::Ok();
  return Forward(first);
}

Status StreamImage::CallHead() {
  head_called_ = true;
  return on_head_ ? on_head_(head_) : Status::Ok();
}

Status StreamImage::Forward(std::span<const uint8_t> bytes) {
  if (qcow2_) return qcow2_->Write(bytes);
  if (ova_) return ova_->Write(bytes);
  if (vmdk_) return vmdk_->Write(bytes);
  const uint64_t at = raw_pos_;
  raw_pos_ += bytes.size();
  return sink_.Write(at, bytes);
}

Result<uint64_t> StreamImage::Finish() {
  if (!error_.ok()) return error_;
  Status s = [&]() -> Status {
    if (!container_known_) {
      std::vector<uint8_t> first = std::move(file_head_);
      file_head_.clear();
      BYOI_RETURN_IF_ERROR(Container(first));
    }
    if (decoder_) {
      BYOI_RETURN_IF_ERROR(
          decoder_->Finish([this](std::span<const uint8_t> out) { return Content(out); }));
    }
    if (!identified_) BYOI_RETURN_IF_ERROR(Identify());
    return Status::Ok();
  }();
  BYOI_RETURN_IF_ERROR(Fail(std::move(s)));
  if (qcow2_ || ova_ || vmdk_) {
    auto size = qcow2_ ? qcow2_->Finish() : ova_ ? ova_->Finish() : vmdk_->Finish();
    if (!size.ok()) return Fail(size.status());
    return *size;
  }
  // The raw disk ends on a whole sector, as RawLayout pads it.
  const uint64_t size = RoundUpToSector(raw_pos_);
  if (size > raw_pos_) BYOI_RETURN_IF_ERROR(Fail(sink_.Zero(raw_pos_, size - raw_pos_)));
  return size;
}

}  // namespace byoi
