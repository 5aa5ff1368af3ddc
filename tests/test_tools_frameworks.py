"""Agent frameworks against the emulator: LangChain (`bind_tools`, `with_structured_output`) and
pydantic-ai (a tool, and an `output_type`), as their users would write them."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from e2e_harness import Harness

langchain_openai = pytest.importorskip("langchain_openai")
pydantic_ai = pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.models.openai import OpenAIChatModel  # noqa: E402
from pydantic_ai.providers.openai import OpenAIProvider  # noqa: E402

LLM = "qwen2.5-0.5B-p256-ax630c"


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def harness():
    h = Harness().start()
    with h.serving():
        yield h


def _chat(h: Harness):  # type: ignore[no-untyped-def]
    return langchain_openai.ChatOpenAI(model=LLM, base_url=h.base_url, api_key="unused", max_retries=0)


def test_langchain_bind_tools(harness):
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        return f"sunny in {city}"

    message = _chat(harness).bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert message.tool_calls[0]["name"] == "get_weather" and message.tool_calls[0]["args"] == {
        "city": "Paris"
    }


def test_langchain_with_structured_output(harness):
    person = _chat(harness).with_structured_output(Person).invoke("Invent a person called Ann")
    assert isinstance(person, Person) and person.name == "Ann" and person.age >= 1


def _agent(h: Harness, **kwargs):  # type: ignore[no-untyped-def]
    model = OpenAIChatModel(LLM, provider=OpenAIProvider(base_url=h.base_url, api_key="unused"))
    return Agent(model, **kwargs)


def test_pydantic_ai_calls_a_tool_and_answers_with_its_result(harness):
    agent = _agent(harness)
    cities: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        cities.append(city)
        return f"sunny in {city}"

    result = agent.run_sync("What is the weather in Paris?")
    assert cities == ["Paris"] and "sunny in Paris" in result.output


def test_pydantic_ai_output_type(harness):
    result = _agent(harness, output_type=Person).run_sync("Invent a person called Ann")
    assert isinstance(result.output, Person) and result.output.name == "Ann"
