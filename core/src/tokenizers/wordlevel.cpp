// WordLevel: one token per pre-tokenized word, or the unknown token. The demo worlds use it.

#include "engram/error.h"
#include "tokenizers/models.h"

namespace engram::tok {

WordLevelModel::WordLevelModel(Vocab vocab, std::string unk_token, std::string source)
    : vocab_(std::move(vocab)), unk_token_(std::move(unk_token)), source_(std::move(source)) {}

std::vector<Token> WordLevelModel::tokenize(std::string_view word) const {
    if (auto id = vocab_.find(word)) return {{*id, std::string(word), 0, word.size()}};
    auto unk = vocab_.find(unk_token_);
    if (!unk) {
        // HF fails the same way, at encode time: a vocabulary without its unk token is usable
        // until an unknown word shows up.
        throw Error(ErrorKind::Format, source_ + ": WordLevel unk_token \"" + unk_token_ +
                                           "\" is not in the vocabulary (needed for \"" +
                                           std::string(word) + "\")");
    }
    return {{*unk, unk_token_, 0, word.size()}};
}

}  // namespace engram::tok
