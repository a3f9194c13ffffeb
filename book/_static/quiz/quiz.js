// Self-check quizzes of the scorelab book (written by the {quiz} directive of book/_ext).
// Each <div class="scorelab-quiz"> holds its questions as JSON in jupyterquiz's format; this
// script turns them into choice buttons and number boxes that answer in the page, with no kernel
// and no network. Maths between $...$ (or $$...$$) is handed to the page's MathJax.
(function () {
  "use strict";

  function escapeHtml(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  // $$...$$ and $...$ become MathJax's \[...\] and \(...\) in Sphinx's math spans; `x` is code
  function richText(text) {
    return escapeHtml(text)
      .replace(/\$\$([\s\S]+?)\$\$/g, '<span class="math notranslate nohighlight">\\[$1\\]</span>')
      .replace(/\$([^$]+?)\$/g, '<span class="math notranslate nohighlight">\\($1\\)</span>')
      .replace(/`([^`]+)`/g, "<code>$1</code>");
  }

  function typeset(element) {
    const mathjax = window.MathJax;
    if (mathjax && mathjax.startup && mathjax.startup.promise && mathjax.typesetPromise) {
      mathjax.startup.promise.then(() => mathjax.typesetPromise([element])).catch(() => {});
    }
  }

  function showFeedback(box, correct, text) {
    box.className = "quiz-feedback " + (correct ? "quiz-correct" : "quiz-incorrect");
    box.innerHTML = "<strong>" + (correct ? "Correct." : "Not quite.") + "</strong> " +
      richText(text || "");
    typeset(box);
  }

  function multipleChoice(question, body, feedback) {
    const choices = document.createElement("div");
    choices.className = "quiz-choices";
    question.answers.forEach((answer, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "quiz-choice";
      button.dataset.correct = answer.correct ? "true" : "false";
      button.dataset.index = String(index);
      button.innerHTML = richText(answer.answer);
      button.addEventListener("click", () => {
        choices.querySelectorAll(".quiz-choice").forEach(b => b.classList.remove("quiz-chosen"));
        button.classList.add("quiz-chosen");
        showFeedback(feedback, answer.correct, answer.feedback);
      });
      choices.appendChild(button);
    });
    body.appendChild(choices);
  }

  function significant(value, digits) {
    return digits ? Number(value.toPrecision(digits)) : value;
  }

  function numeric(question, body, feedback) {
    const form = document.createElement("form");
    form.className = "quiz-numeric";
    const input = document.createElement("input");
    input.type = "text";
    input.inputMode = "decimal";
    input.className = "quiz-input";
    input.setAttribute("aria-label", "your answer");
    const button = document.createElement("button");
    button.type = "submit";
    button.className = "quiz-check";
    button.textContent = "Check";
    form.append(input, button);
    form.addEventListener("submit", event => {
      event.preventDefault();
      const raw = input.value.trim().replace(",", ".");
      const value = Number(raw);
      if (raw === "" || !Number.isFinite(value)) {
        showFeedback(feedback, false, "Please enter a number, such as 0.25 or 1e-3.");
        return;
      }
      const rounded = significant(value, question.precision);
      const tolerance = 1e-9 * Math.max(1, Math.abs(rounded));
      const match = question.answers.find(a =>
        (a.type === "value" && Math.abs(rounded - a.value) <= tolerance) ||
        (a.type === "range" && rounded >= a.range[0] && rounded <= a.range[1]));
      const fallback = question.answers.find(a => a.type === "default");
      if (match) showFeedback(feedback, match.correct, match.feedback);
      else showFeedback(feedback, false, fallback ? fallback.feedback : "");
    });
    body.appendChild(form);
  }

  function render(container) {
    const data = container.querySelector("script.scorelab-quiz-data");
    if (!data || container.dataset.rendered) return;
    const questions = JSON.parse(data.textContent);
    container.dataset.rendered = "true";
    questions.forEach((question, index) => {
      const card = document.createElement("div");
      card.className = "quiz-question quiz-type-" + question.type.replace("_", "-");
      const title = document.createElement("p");
      title.className = "quiz-text";
      title.innerHTML = "<strong>" + (index + 1) + ".</strong> " + richText(question.question);
      const feedback = document.createElement("p");
      feedback.className = "quiz-feedback";
      feedback.setAttribute("aria-live", "polite");
      card.appendChild(title);
      if (question.type === "numeric") numeric(question, card, feedback);
      else multipleChoice(question, card, feedback);
      card.appendChild(feedback);
      container.appendChild(card);
    });
    typeset(container);
  }

  function renderAll() {
    document.querySelectorAll("div.scorelab-quiz").forEach(render);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", renderAll);
  else renderAll();
})();
