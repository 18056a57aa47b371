"""The Tongyi DeepResearch prompt format (contract section 4)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date

from deepresearch.tools.base import Tool

STOP_SEQUENCES = ("\n<tool_response>", "<tool_response>")

# The wording follows the prompt the released model was trained with, plus what
# a medical-evidence answer needs: numbered citations of the sources it used.
SYSTEM_PROMPT = """You are a deep research assistant. Your core function is to conduct \
thorough, multi-source investigations into any topic. You must handle both broad, open-domain \
inquiries and queries within specialized academic fields. For every request, synthesize \
information from credible, diverse sources to deliver a comprehensive, accurate, and objective \
response. Cite the sources you rely on with their numbers in square brackets, like [1] or [2], \
exactly as the tools numbered them. When you have gathered sufficient information and are ready \
to provide the definitive response, you must enclose the entire final answer within \
<answer></answer> tags.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>

Current date: """


def system_prompt(tools: Iterable[Tool], today: date) -> str:
    schemas = "\n".join(
        json.dumps(
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            },
            ensure_ascii=False,
        )
        for tool in tools
    )
    return SYSTEM_PROMPT.format(tools=schemas) + today.isoformat()


NATIVE_PROMPT = """You are a deep research assistant. Investigate the user's question \
thoroughly with the tools you are given, using credible, diverse sources. Cite the sources \
you rely on with their numbers in square brackets, like [1] or [2], exactly as the tools \
numbered them. When you have gathered sufficient information, reply without calling a tool: \
that reply is your final answer.

Current date: """

# Said when the conversation is about to outgrow the model's context (upstream's wording).
FINAL_CALL = (
    "You have now reached the maximum context length you can handle. You should stop making "
    "tool calls and, based on all the information above, think again and provide what you "
    "consider the most likely answer in the following format:"
    "<think>your final thinking</think>\n<answer>your answer</answer>"
)


def native_system_prompt(today: date) -> str:
    return NATIVE_PROMPT + today.isoformat()


def tool_response(text: str) -> str:
    # A page or file could contain the closing tag and fake the end of the response.
    text = text.replace("</tool_response>", "&lt;/tool_response&gt;")
    return f"<tool_response>\n{text}\n</tool_response>"
